//! Bad data: VOC's inclusive boxes one pixel wide (`xmin == xmax`, which annotation tools
//! write) are read, never reach the loss (they have no width at the detector's scale), and
//! training runs; an image left without a usable box is skipped; a non-finite loss names
//! the images of its batch.
use lbwnet::config::ExperimentConfig;
use lbwnet::data::loader::{Loader, LoaderConfig};
use lbwnet::data::voc::{annotation_path, VocDataset};
use std::path::Path;
use std::sync::Arc;
use tch::Tensor;

fn config(root: &Path, sets: &[String]) -> ExperimentConfig {
    let yaml = format!(
        r#"
name: bad-data
data:
  root: {data}
  min_size: 64
  max_size: 96
  loader_threads: 1
  synthetic: {{train: 8, test: 2, seed: 3, width: 96, height: 64}}
model:
  backbone: small
  small_width: 2
  anchor_sizes: [16, 32]
  anchor_ratios: [1.0]
  rpn: {{channels: 4, pre_nms_top_n_train: 50, post_nms_top_n_train: 10, pre_nms_top_n_test: 20, post_nms_top_n_test: 5, min_size: 1}}
  roi: {{batch_size_per_image: 8, head_hidden: 8}}
train:
  iterations: 8
  batch_size: 2
  lr: 0.005
  lr_steps: [100]
  warmup_iterations: 0
  checkpoint_interval: 0
  log_interval: 100
  output_dir: {runs}
  device: cpu
  threads: 1
"#,
        data = root.join("data").display(),
        runs = root.join("runs").display()
    );
    ExperimentConfig::from_yaml_str(&yaml, sets, Path::new("bad-data.yaml")).unwrap()
}

/// Sets `<xmax>` to `<xmin>` in the first `count` boxes of an annotation (all with None);
/// returns how many it changed.
fn make_one_pixel_wide(path: &Path, count: Option<usize>) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = String::new();
    let mut rest = text.as_str();
    let mut changed = 0;
    while let Some(at) = rest.find("<bndbox>") {
        let end = rest[at..].find("</bndbox>").unwrap() + at;
        out.push_str(&rest[..at]);
        let bndbox = &rest[at..end];
        let field = |tag: &str| {
            let open = format!("<{tag}>");
            let s = bndbox.find(&open).unwrap() + open.len();
            let e = bndbox[s..].find('<').unwrap() + s;
            (s, e)
        };
        if count.is_none_or(|c| changed < c) {
            let (xs, xe) = field("xmin");
            let (ms, me) = field("xmax");
            let xmin = &bndbox[xs..xe];
            out.push_str(&format!("{}{xmin}{}", &bndbox[..ms], &bndbox[me..]));
            changed += 1;
        } else {
            out.push_str(bndbox);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    std::fs::write(path, out).unwrap();
    changed
}

#[test]
fn one_pixel_wide_boxes_train_and_a_nan_loss_names_its_images() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &[]);
    let root = &cfg.data.root;
    lbwnet::data::ensure_synthetic(root, cfg.data.synthetic.as_ref()).unwrap();
    let ids = VocDataset::open(root, "trainval", None).unwrap().ids;
    assert_eq!(ids.len(), 8);
    // Image 0: its first box one pixel wide; image 1: all of them.
    assert_eq!(
        make_one_pixel_wide(&annotation_path(root, &ids[0]), Some(1)),
        1
    );
    assert!(make_one_pixel_wide(&annotation_path(root, &ids[1]), None) >= 1);

    // The reader accepts them as they are (VOC's inclusive pixels).
    let dataset = Arc::new(VocDataset::open(root, "trainval", None).unwrap());
    let first = &dataset.annotations[0].objects[0];
    assert_eq!(first.bbox[0], first.bbox[2]);

    // The loader: no box without area reaches the targets; image 1 has none left.
    let loader_cfg = LoaderConfig::from_data_config(&cfg.data, true, cfg.train.seed);
    let loader = Loader::new(dataset.clone(), loader_cfg.clone(), 0, Some(14)).unwrap();
    assert_eq!(loader.epoch_len(), 7);
    let mut seen = std::collections::HashSet::new();
    for sample in loader {
        let sample = sample.unwrap();
        let boxes = Vec::<Vec<f32>>::try_from(sample.boxes.shallow_clone()).unwrap();
        assert!(!boxes.is_empty());
        for b in &boxes {
            assert!(b[2] > b[0] && b[3] > b[1], "{}: {b:?}", sample.id);
        }
        seen.insert(sample.id);
    }
    assert!(
        seen.contains(&ids[0]) && !seen.contains(&ids[1]),
        "{seen:?}"
    );

    // Training over two epochs runs (the issue's NaN at iteration 1 before).
    let (metrics, _) = lbwnet::train::trainer::train(&cfg, None).unwrap();
    assert!(metrics.map.is_finite());

    // A non-finite loss names the batch's images: start from weights made NaN.
    let weights_path = dir.path().join("nan.safetensors");
    let run = lbwnet::train::checkpoint::latest(&cfg.run_dir())
        .unwrap()
        .unwrap();
    let state = lbwnet::train::checkpoint::read_state(&run).unwrap();
    let mut tensors = Tensor::read_safetensors(run.with_file_name(&state.weights)).unwrap();
    for (_, t) in tensors.iter_mut() {
        if t.kind() == tch::Kind::Float {
            *t = t.full_like(f64::NAN);
        }
    }
    Tensor::write_safetensors(&tensors, &weights_path).unwrap();
    let nan_cfg = config(
        dir.path(),
        &[
            format!("train.init_from={}", weights_path.display()),
            "name=nan".to_string(),
        ],
    );
    let err = format!(
        "{:#}",
        lbwnet::train::trainer::train(&nan_cfg, None).unwrap_err()
    );
    let batch: Vec<String> = Loader::new(dataset, loader_cfg, 0, Some(2))
        .unwrap()
        .map(|s| s.unwrap().id)
        .collect();
    assert!(err.contains("the loss is NaN"), "{err}");
    for id in &batch {
        assert!(err.contains(&format!("`{id}`")), "{id}: {err}");
    }
    assert!(
        err.contains("annotations") && err.contains("train.lr"),
        "{err}"
    );
}
