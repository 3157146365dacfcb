//! Synthetic generator -> VOC reader -> loader: boxes match the XML, flip and resize move
//! boxes with the pixels, the generator is deterministic, bad inputs give named errors.
use lbwnet::config::{DataConfig, ExperimentConfig, Normalization, SyntheticConfig};
use lbwnet::data::synthetic::{self, ensure_synthetic, SYNTHETIC_CLASSES};
use lbwnet::data::voc::{annotation_path, VocDataset};
use lbwnet::data::{load_sample, Loader, LoaderConfig, Sample};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn spec(seed: u64) -> SyntheticConfig {
    SyntheticConfig {
        train: 6,
        test: 3,
        seed,
        width: 160,
        height: 120,
        ..SyntheticConfig::default()
    }
}

fn loader_config(min_size: u32, flip: bool, shuffle: bool) -> LoaderConfig {
    LoaderConfig {
        min_size,
        max_size: 1000,
        flip,
        normalization: Normalization::Torchvision,
        threads: 2,
        queue_size: 4,
        drop_difficult: false,
        shuffle,
        seed: 11,
    }
}

fn generated(seed: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("synth");
    synthetic::generate(&root, &spec(seed)).unwrap();
    (dir, root)
}

fn boxes_of(sample: &Sample) -> Vec<Vec<f32>> {
    Vec::<Vec<f32>>::try_from(&sample.boxes).unwrap()
}

fn all_files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push((
                    path.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&path).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn generator_writes_the_voc_layout_deterministically() {
    let (_a, first) = generated(5);
    let (_b, second) = generated(5);
    let files = all_files(&first);
    // 9 images, 9 annotations, 4 image sets, labels, marker.
    assert_eq!(files.len(), 9 + 9 + 4 + 2);
    assert_eq!(files, all_files(&second), "same seed, same bytes");
    let (_c, other) = generated(6);
    assert_ne!(files, all_files(&other));
    let read =
        |name: &str| std::fs::read_to_string(first.join("ImageSets/Main").join(name)).unwrap();
    assert_eq!(read("trainval.txt").lines().count(), 6);
    assert_eq!(
        read("train.txt").lines().count() + read("val.txt").lines().count(),
        6
    );
    assert_eq!(read("test.txt"), "000007\n000008\n000009\n");
    assert_eq!(
        std::fs::read_to_string(first.join("labels.txt"))
            .unwrap()
            .lines()
            .collect::<Vec<_>>(),
        SYNTHETIC_CLASSES
    );
    // No temporary folder is left next to the set.
    assert_eq!(
        std::fs::read_dir(first.parent().unwrap()).unwrap().count(),
        1
    );
}

#[test]
fn loader_boxes_match_the_xml_and_scale_with_the_image() {
    let (_dir, root) = generated(1);
    let dataset = Arc::new(VocDataset::open(&root, "trainval", None).unwrap());
    assert_eq!(dataset.classes, SYNTHETIC_CLASSES);
    assert_eq!(dataset.len(), 6);
    for (min_size, scale) in [(120, 1.0f32), (240, 2.0)] {
        let loader = Loader::new(
            dataset.clone(),
            loader_config(min_size, false, false),
            0,
            None,
        )
        .unwrap();
        let samples: Vec<Sample> = loader.map(Result::unwrap).collect();
        assert_eq!(samples.len(), 6);
        for (i, s) in samples.iter().enumerate() {
            let ann = &dataset.annotations[i];
            assert_eq!((s.index, s.id.as_str()), (i, ann.id.as_str()));
            assert_eq!(s.image.size(), [3, 120 * scale as i64, 160 * scale as i64]);
            assert_eq!(
                (s.scale as f32, s.flipped, s.orig_size),
                (scale, false, (160, 120))
            );
            let expected: Vec<Vec<f32>> = ann
                .objects
                .iter()
                .map(|o| o.bbox.iter().map(|v| (v - 1.0) * scale).collect())
                .collect();
            assert_eq!(boxes_of(s), expected);
            let labels = Vec::<i64>::try_from(&s.labels).unwrap();
            assert_eq!(
                labels,
                ann.objects
                    .iter()
                    .map(|o| o.class_index as i64 + 1)
                    .collect::<Vec<_>>()
            );
            let difficult = Vec::<bool>::try_from(&s.difficult).unwrap();
            assert_eq!(
                difficult,
                ann.objects.iter().map(|o| o.difficult).collect::<Vec<_>>()
            );
        }
    }
}

#[test]
fn flip_mirrors_image_and_boxes() {
    let (_dir, root) = generated(2);
    let dataset = VocDataset::open(&root, "test", None).unwrap();
    let cfg = loader_config(180, false, false);
    let plain = load_sample(&dataset, 0, false, &cfg).unwrap();
    let flipped = load_sample(&dataset, 0, true, &cfg).unwrap();
    assert!(flipped.flipped);
    assert!(plain.image.flip([2]).equal(&flipped.image));
    let (w, s) = (160.0f32, plain.scale as f32);
    for (p, f) in boxes_of(&plain).iter().zip(boxes_of(&flipped)) {
        // Mirrored in original pixels, then scaled (py-faster-rcnn).
        let (x1, x2) = (p[0] / s, p[2] / s);
        assert!(
            (f[0] - (w - 1.0 - x2) * s).abs() < 1e-3 && (f[2] - (w - 1.0 - x1) * s).abs() < 1e-3
        );
        assert_eq!((f[1], f[3]), (p[1], p[3]));
    }
}

/// A solid rectangle on a plain background: after resize and flip, the transformed box
/// still frames the rectangle's pixels.
#[test]
fn boxes_follow_the_pixels_through_resize_and_flip() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for sub in ["Annotations", "JPEGImages", "ImageSets/Main"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    let (w, h) = (90u32, 60u32);
    // 1-based inclusive box 11..30 x 21..50.
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb(if (10..30).contains(&x) && (20..50).contains(&y) {
            [250, 250, 250]
        } else {
            [10, 10, 10]
        })
    });
    img.save(root.join("JPEGImages/r.jpg")).unwrap();
    std::fs::write(root.join("labels.txt"), "rect\n").unwrap();
    std::fs::write(root.join("ImageSets/Main/all.txt"), "r\n").unwrap();
    std::fs::write(
        root.join("Annotations/r.xml"),
        "<annotation><size><width>90</width><height>60</height></size><object><name>rect</name>\
         <bndbox><xmin>11</xmin><ymin>21</ymin><xmax>30</xmax><ymax>50</ymax></bndbox></object></annotation>",
    )
    .unwrap();
    let dataset = VocDataset::open(root, "all", None).unwrap();
    let mut cfg = loader_config(150, false, false);
    cfg.normalization = Normalization::Caffe;
    for flip in [false, true] {
        let s = load_sample(&dataset, 0, flip, &cfg).unwrap();
        assert_eq!(s.scale, 2.5);
        let b = &boxes_of(&s)[0];
        // Caffe: channel 0 is blue minus its mean; bright is > 0, dark < 0.
        let plane = s.image.get(0);
        let at = |x: f32, y: f32| plane.double_value(&[y.round() as i64, x.round() as i64]);
        let (x1, y1, x2, y2) = (b[0], b[1], b[2], b[3]);
        for (x, y) in [
            (x1 + 3.0, y1 + 3.0),
            (x2 - 3.0, y2 - 3.0),
            ((x1 + x2) / 2.0, (y1 + y2) / 2.0),
        ] {
            assert!(
                at(x, y) > 100.0,
                "flip {flip}: inside ({x}, {y}) is {}",
                at(x, y)
            );
        }
        for (x, y) in [
            (x1 - 6.0, y1 + 10.0),
            (x2 + 6.0, y2 - 10.0),
            (x1 + 10.0, y1 - 6.0),
            (x1 + 10.0, y2 + 6.0),
        ] {
            assert!(
                at(x, y) < -60.0,
                "flip {flip}: outside ({x}, {y}) is {}",
                at(x, y)
            );
        }
    }
}

#[test]
fn positions_are_a_pure_function_of_seed_and_position() {
    let (_dir, root) = generated(3);
    let dataset = Arc::new(VocDataset::open(&root, "trainval", None).unwrap());
    let key = |s: Sample| {
        (
            s.id.clone(),
            s.flipped,
            Vec::<f32>::try_from(&s.image.flatten(0, -1)).unwrap(),
        )
    };
    let mut one_thread = loader_config(120, true, true);
    one_thread.threads = 1;
    let full: Vec<_> = Loader::new(dataset.clone(), one_thread, 0, Some(15))
        .unwrap()
        .map(|s| key(s.unwrap()))
        .collect();
    let mut three_threads = loader_config(120, true, true);
    three_threads.threads = 3;
    let resumed: Vec<_> = Loader::new(dataset.clone(), three_threads, 7, Some(8))
        .unwrap()
        .map(|s| key(s.unwrap()))
        .collect();
    assert_eq!(&full[7..], &resumed[..]);
    // Each epoch (6 images) is a permutation, and flips happen.
    let mut epoch: Vec<_> = full[6..12].iter().map(|k| k.0.clone()).collect();
    epoch.sort();
    assert_eq!(epoch, dataset.ids);
    assert!(full.iter().any(|k| k.1) && full.iter().any(|k| !k.1));
}

#[test]
fn training_mode_drops_difficult_objects_and_empty_images() {
    let (_dir, root) = generated(4);
    let mut dataset = VocDataset::open(&root, "trainval", None).unwrap();
    // Image 0 all difficult, one other image partly difficult, the rest easy.
    for (i, ann) in dataset.annotations.iter_mut().enumerate() {
        for o in &mut ann.objects {
            o.difficult = i == 0;
        }
    }
    let partly = (1..dataset.len())
        .find(|&i| dataset.annotations[i].objects.len() >= 2)
        .expect("an image with two objects");
    dataset.annotations[partly].objects[0].difficult = true;
    let kept = dataset.annotations[partly].objects.len() - 1;
    let dataset = Arc::new(dataset);
    let mut cfg = loader_config(120, false, false);
    cfg.drop_difficult = true;
    let loader = Loader::new(dataset.clone(), cfg, 0, None).unwrap();
    assert_eq!(loader.epoch_len(), 5);
    let samples: Vec<Sample> = loader.map(Result::unwrap).collect();
    assert!(samples.iter().all(|s| s.index != 0));
    let one = samples.iter().find(|s| s.index == partly).unwrap();
    assert_eq!(one.boxes.size(), [kept as i64, 4]);
    assert!(Vec::<bool>::try_from(&one.difficult)
        .unwrap()
        .iter()
        .all(|d| !d));
}

#[test]
fn dropping_an_endless_loader_stops_its_threads() {
    let (_dir, root) = generated(5);
    let dataset = Arc::new(VocDataset::open(&root, "trainval", None).unwrap());
    let mut loader = Loader::new(dataset, loader_config(120, true, true), 0, None).unwrap();
    for _ in 0..20 {
        loader.next().unwrap().unwrap();
    }
    // Let the workers fill their queues and block.
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    drop(loader);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn malformed_inputs_name_the_file_and_the_problem() {
    let (_dir, root) = generated(6);
    let first = annotation_path(&root, "000001");
    let original = std::fs::read_to_string(&first).unwrap();
    let error = || {
        format!(
            "{:#}",
            VocDataset::open(&root, "trainval", None).unwrap_err()
        )
    };

    std::fs::write(&first, original.replacen("</object>", "", 1)).unwrap();
    let err = error();
    assert!(
        err.contains("000001.xml") && err.contains("malformed XML"),
        "{err}"
    );

    let name_start = original.find("<name>").unwrap() + "<name>".len();
    let name_end = original[name_start..].find('<').unwrap() + name_start;
    std::fs::write(
        &first,
        format!(
            "{}giraffe{}",
            &original[..name_start],
            &original[name_end..]
        ),
    )
    .unwrap();
    let err = error();
    assert!(
        err.contains("000001.xml") && err.contains("class `giraffe`"),
        "{err}"
    );

    let xmin = original.find("<xmin>").unwrap() + "<xmin>".len();
    let xmin_end = original[xmin..].find('<').unwrap() + xmin;
    std::fs::write(
        &first,
        format!("{}999{}", &original[..xmin], &original[xmin_end..]),
    )
    .unwrap();
    let err = error();
    assert!(
        err.contains("000001.xml") && err.contains("degenerate box"),
        "{err}"
    );

    std::fs::remove_file(&first).unwrap();
    let err = error();
    assert!(err.contains("000001.xml"), "{err}");

    let err = format!(
        "{:#}",
        VocDataset::open(&root, "nosuchsplit", None).unwrap_err()
    );
    assert!(err.contains("nosuchsplit.txt"), "{err}");

    // A missing image is reported by the loader, which goes on with the next position.
    let dataset = Arc::new(VocDataset::open(&root, "test", None).unwrap());
    std::fs::remove_file(root.join("JPEGImages/000008.jpg")).unwrap();
    let results: Vec<_> = Loader::new(dataset, loader_config(120, false, false), 0, None)
        .unwrap()
        .collect();
    assert_eq!(results.len(), 3);
    let err = format!("{:#}", results[1].as_ref().unwrap_err());
    assert!(err.contains("000008.jpg"), "{err}");
    assert!(results[0].is_ok() && results[2].is_ok());
}

#[test]
fn ensure_synthetic_generates_once_and_refuses_mismatches() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = DataConfig {
        root: dir.path().join("data/synth"),
        synthetic: Some(spec(9)),
        ..DataConfig::default()
    };
    ensure_synthetic(&cfg.root, cfg.synthetic.as_ref()).unwrap();
    assert!(cfg.root.join("ImageSets/Main/test.txt").is_file());
    ensure_synthetic(&cfg.root, cfg.synthetic.as_ref()).unwrap();
    cfg.synthetic = Some(spec(10));
    let err = format!(
        "{:#}",
        ensure_synthetic(&cfg.root, cfg.synthetic.as_ref()).unwrap_err()
    );
    assert!(
        err.contains("data.root") && err.contains("gen-data --force"),
        "{err}"
    );
    std::fs::remove_file(cfg.root.join(synthetic::MARKER_FILE)).unwrap();
    let err = format!(
        "{:#}",
        ensure_synthetic(&cfg.root, cfg.synthetic.as_ref()).unwrap_err()
    );
    assert!(err.contains("not a synthetic data set"), "{err}");
}

#[test]
fn gen_data_command_skips_up_to_date_sets_and_replaces_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("set");
    let exe = env!("CARGO_BIN_EXE_lbwnet");
    let gen = |extra: &[&str]| {
        std::process::Command::new(exe)
            .args(["-q", "gen-data", "--out"])
            .arg(&out)
            .args(["--train", "2", "--test", "1", "--size", "96x64"])
            .args(extra)
            .output()
            .unwrap()
    };
    assert!(gen(&[]).status.success());
    let before = all_files(&out);
    let again = gen(&[]);
    assert!(
        again.status.success() && String::from_utf8_lossy(&again.stdout).contains("already holds")
    );
    let other = gen(&["--seed", "4"]);
    assert!(!other.status.success() && String::from_utf8_lossy(&other.stderr).contains("--force"));
    assert_eq!(all_files(&out), before);
    assert!(gen(&["--seed", "4", "--force"]).status.success());
    assert_ne!(all_files(&out), before);
    let ann = VocDataset::open(&out, "test", None).unwrap();
    assert_eq!(
        (ann.annotations[0].width, ann.annotations[0].height),
        (96, 64)
    );
}

/// FNV-1a over every file's path and bytes.
fn digest(files: &[(PathBuf, Vec<u8>)]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for (path, bytes) in files {
        for b in path.to_string_lossy().bytes().chain(bytes.iter().copied()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[test]
fn default_knobs_reproduce_the_original_generator() {
    // The generator's knobs default to what it always drew: the default set is the same
    // bytes as before they existed (this digest was taken from the generator before the
    // knobs, and checked against it file by file).
    let (_dir, root) = generated(5);
    let files = all_files(&root);
    assert_eq!(digest(&files), DEFAULT_SET_DIGEST, "default set changed");
    let marker = std::fs::read_to_string(root.join(synthetic::MARKER_FILE)).unwrap();
    let keys: Vec<String> = serde_json::from_str::<serde_json::Value>(&marker)
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        keys,
        ["generator", "train", "test", "seed", "width", "height"]
    );
    let names: Vec<&str> = synthetic::DEFAULT_SHAPES.iter().map(|s| s.name()).collect();
    assert_eq!(names, SYNTHETIC_CLASSES);
}

const DEFAULT_SET_DIGEST: u64 = 14876711430234307236;

/// The bench preset's synthetic block, shrunk to a few images.
fn bench_spec(seed: u64) -> SyntheticConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/bench.yaml");
    let config = ExperimentConfig::load(&path, &[]).unwrap();
    SyntheticConfig {
        train: 4,
        test: 2,
        seed,
        ..config.data.synthetic.unwrap()
    }
}

#[test]
fn bench_preset_is_deterministic_and_names_its_shapes() {
    let gen = |seed| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("bench");
        synthetic::generate(&root, &bench_spec(seed)).unwrap();
        (dir, root)
    };
    let (_a, first) = gen(3);
    let (_b, second) = gen(3);
    let files = all_files(&first);
    assert_eq!(files.len(), 6 + 6 + 4 + 2);
    assert_eq!(files, all_files(&second), "same seed, same bytes");
    let (_c, other) = gen(4);
    assert_ne!(files, all_files(&other));
    let spec = bench_spec(3);
    assert!(spec.shapes.len() > SYNTHETIC_CLASSES.len());
    let labels: Vec<String> = std::fs::read_to_string(first.join("labels.txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let names: Vec<&str> = spec.shapes.iter().map(|s| s.name()).collect();
    assert_eq!(labels, names);
    // The loader reads it like any VOC set, with the set's own classes; the marker records
    // the knobs, so a default set at the same root is told apart.
    let dataset = VocDataset::open(&first, "trainval", None).unwrap();
    assert_eq!(dataset.classes, names);
    assert!(dataset.annotations.iter().all(|a| !a.objects.is_empty()));
    let defaults = SyntheticConfig {
        shapes: synthetic::DEFAULT_SHAPES.to_vec(),
        ..spec.clone()
    };
    assert!(matches!(
        synthetic::inspect(&first, &defaults).unwrap(),
        synthetic::Existing::Different(_)
    ));
    assert_eq!(
        synthetic::inspect(&first, &spec).unwrap(),
        synthetic::Existing::Same
    );
}

#[test]
fn bad_knobs_are_refused_with_their_key() {
    let bad = [
        SyntheticConfig {
            shapes: vec![],
            ..spec(1)
        },
        SyntheticConfig {
            objects: [5, 2],
            ..spec(1)
        },
        SyntheticConfig {
            object_size: [90.0, 100.0],
            ..spec(1)
        },
        SyntheticConfig {
            blur: [2.0, 1.0],
            ..spec(1)
        },
        SyntheticConfig {
            shapes: vec![synthetic::Shape::Ring, synthetic::Shape::Ring],
            ..spec(1)
        },
    ];
    for spec in bad {
        let dir = tempfile::tempdir().unwrap();
        let err = format!(
            "{:#}",
            synthetic::generate(&dir.path().join("s"), &spec).unwrap_err()
        );
        assert!(err.contains("key `data.synthetic."), "{err}");
    }
}
