//! Names from strangers never lead a path out of the run: a class name, an image id, a split
//! name, a run or sweep name that is not a plain name (`fsutil::check_name`) ends the
//! command with exit 1 and an error naming the file or key and the name, before anything
//! is written or deleted.
mod common;
use common::{lbwnet, lbwnet_ok};
use std::path::{Path, PathBuf};

/// Where the escaping names below would lead: a name relative to the work directory.
const ESCAPE: &str = "../../../escaped";

struct Workdir {
    dir: tempfile::TempDir,
}

impl Workdir {
    /// A tiny generated VOC-layout data set under `data/` and its config `cfg.yaml`.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            r#"
name: names
data:
  root: {root}/data
  min_size: 64
  max_size: 96
  loader_threads: 1
  synthetic: {{train: 4, test: 2, seed: 3, width: 96, height: 64}}
model:
  backbone: small
  small_width: 2
  anchor_sizes: [16, 32]
  anchor_ratios: [1.0]
  rpn: {{channels: 4, pre_nms_top_n_train: 50, post_nms_top_n_train: 10, pre_nms_top_n_test: 20, post_nms_top_n_test: 5, min_size: 1}}
  roi: {{batch_size_per_image: 8, head_hidden: 8}}
train:
  iterations: 2
  batch_size: 1
  warmup_iterations: 0
  lr_steps: [100]
  checkpoint_interval: 0
  output_dir: {root}/work/runs
  device: cpu
  threads: 1
"#,
            root = dir.path().display()
        );
        std::fs::create_dir_all(dir.path().join("work")).unwrap();
        std::fs::write(dir.path().join("cfg.yaml"), yaml).unwrap();
        let w = Workdir { dir };
        lbwnet_ok(&["gen-data", "--config", w.config().to_str().unwrap()]);
        w
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("cfg.yaml")
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Every file and directory under the temporary root, as relative paths.
    fn listing(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, root: &Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                let path = entry.path();
                out.push(path.strip_prefix(root).unwrap().to_path_buf());
                if path.is_dir() && !path.is_symlink() {
                    walk(&path, root, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(self.dir.path(), self.dir.path(), &mut out);
        out.sort();
        out
    }

    /// `lbwnet train --config cfg.yaml sets…` must fail with exit 1, naming each of
    /// `names` in its error, and change no file.
    fn train_fails(&self, sets: &[&str], names: &[&str]) {
        let before = self.listing();
        let config = self.config();
        let mut args = vec!["train", "--config", config.to_str().unwrap()];
        for set in sets {
            args.extend(["--set", set]);
        }
        let out = lbwnet(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        for name in names {
            assert!(stderr.contains(name), "`{name}` not in: {stderr}");
        }
        assert_eq!(self.listing(), before, "{args:?} changed files");
    }
}

/// Replaces `from` by `to` in a text file.
fn rewrite(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{path:?} has no `{from}`");
    std::fs::write(path, text.replace(from, to)).unwrap();
}

#[test]
fn a_class_name_that_is_a_path_is_refused_with_the_file_named() {
    let w = Workdir::new();
    let labels = w.data().join("labels.txt");
    rewrite(&labels, "circle", ESCAPE);
    for entry in std::fs::read_dir(w.data().join("Annotations")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace("<name>circle<", &format!("<name>{ESCAPE}<")),
        )
        .unwrap();
    }
    w.train_fails(&[], &["labels.txt", ESCAPE]);
}

#[test]
fn an_image_id_that_is_a_path_is_refused_with_the_split_file_named() {
    let w = Workdir::new();
    let split = w.data().join("ImageSets/Main/trainval.txt");
    let text = std::fs::read_to_string(&split).unwrap();
    std::fs::write(&split, format!("{ESCAPE}\n{text}")).unwrap();
    w.train_fails(&[], &["trainval.txt", "line 1", ESCAPE]);
}

#[test]
fn run_and_split_names_from_the_config_or_set_are_checked() {
    let w = Workdir::new();
    // `..` as the run name would make a fresh training clear the directory above runs/.
    let sentinel = w.dir.path().join("work/metrics.json");
    std::fs::write(&sentinel, "{}").unwrap();
    w.train_fails(&["name=.."], &["key `name`", "`..`"]);
    w.train_fails(&["name=a/b"], &["key `name`", "a/b"]);
    w.train_fails(
        &[&format!("data.test_split={ESCAPE}")],
        &["data.test_split", ESCAPE],
    );
    w.train_fails(&["data.classes=[cat, ../dog]"], &["data.classes", "../dog"]);
    assert!(sentinel.exists());
}

#[test]
fn a_sweep_name_that_is_a_path_is_refused() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/sweeps/default.yaml");
    let out = lbwnet(&[
        "sweep",
        "--config",
        config.to_str().unwrap(),
        "--quick",
        "--plan",
        "--set",
        &format!("name={ESCAPE}"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("key `name`") && stderr.contains(ESCAPE),
        "{stderr}"
    );
}
