//! Fuzzing the readers of user files: VOC annotation XML, `labels.txt`, ImageSets,
//! comp4 detection files, float32 `.npy` and YAML experiment configs. Valid seeds are
//! mutated with seeded random truncations, byte and bit flips, insertions, deletions,
//! duplicated spans and format tokens; every case must parse or fail with an error that
//! names the file: never a panic, never a hang.
mod common;

use common::fuzz::mutate;
use lbwnet::config::ExperimentConfig;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Mutated inputs per reader.
const CASES_PER_READER: usize = 2000;
/// Bound on the whole run (a hang fails the test instead of blocking it).
const TIME_LIMIT: Duration = Duration::from_secs(60);

const XML: &str = r#"<annotation>
	<folder>VOC2007</folder>
	<filename>000001.jpg</filename>
	<size><width>353</width><height>500</height><depth>3</depth></size>
	<segmented>0</segmented>
	<object>
		<name>dog</name><pose>Left</pose><truncated>1</truncated><difficult>0</difficult>
		<bndbox><xmin>48</xmin><ymin>240</ymin><xmax>195</xmax><ymax>371</ymax></bndbox>
	</object>
	<object>
		<name>person</name><pose>Left</pose><truncated>1</truncated><difficult>0</difficult>
		<part><name>head</name><bndbox><xmin>9</xmin><ymin>10</ymin><xmax>19</xmax><ymax>20</ymax></bndbox></part>
		<bndbox><xmin>8</xmin><ymin>12</ymin><xmax>352</xmax><ymax>498</ymax></bndbox>
	</object>
	<object><name>cat</name><difficult>1</difficult>
		<bndbox><xmin>19</xmin><ymin>5</ymin><xmax>19</xmax><ymax>30</ymax></bndbox></object>
</annotation>
"#;

const LABELS: &str = "dog\nperson\ncat\n\nbird\n";
const IMAGE_SET: &str = "000001\n000002  1\n\n000005 -1\n000007\n";
const COMP4: &str = "000001 0.953 48.0 240.0 195.0 371.0\n000002 0.120 1.5 2.5 100.0 80.0\n\n000001 0.050 10.0 10.0 10.0 10.0\n";

const XML_TOKENS: &[&str] = &[
    "<",
    ">",
    "</",
    "/>",
    "<object>",
    "</object>",
    "<bndbox>",
    "<xmin>",
    "</xmax>",
    "&amp;",
    "&#0;",
    "&#xFFFFFFFF;",
    "&bogus;",
    "<![CDATA[",
    "]]>",
    "<!--",
    "-->",
    "<?xml",
    "\"",
    "'",
    "-1",
    "1e40",
    "NaN",
    "inf",
    "0",
    "4294967296",
    "<annotation>",
    "<size>",
    "\u{feff}",
];
const TEXT_TOKENS: &[&str] = &[
    " ",
    "\t",
    "\n",
    "\r\n",
    "\u{0}",
    "\u{feff}",
    "-",
    "NaN",
    "inf",
    "-inf",
    "1e400",
    "0x10",
    "dog",
    "dog dog",
    "#",
    "\u{00e9}",
    "99999999999999999999",
];
const NPY_TOKENS: &[&str] = &[
    "'<f4'",
    "'<f8'",
    "'>f4'",
    "'|u1'",
    "True",
    "False",
    "(",
    ")",
    ",",
    "(0,)",
    "()",
    "(18446744073709551615,)",
    "(-1,)",
    "(3,4,5)",
    "'shape'",
    "'descr'",
    "{",
    "}",
    ":",
    "\n",
    "(99999999999, 99999999999)",
];
const YAML_TOKENS: &[&str] = &[
    ":",
    "- ",
    "[",
    "]",
    "{",
    "}",
    "&a",
    "*a",
    "!!float",
    "!!binary",
    "~",
    "null",
    "-1",
    "1e400",
    ".nan",
    ".inf",
    "18446744073709551615",
    "\t",
    "\n  ",
    "'",
    "\"",
    "|",
    ">",
    "---",
    "...",
    "? ",
    "%YAML 1.2",
    "<<: *a",
    "0x10",
    "yes",
];

fn npy_seed(header: &str, values: &[f32]) -> Vec<u8> {
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    bytes
}

/// A reader under test: writes a case to its file and reads it back.
struct Reader {
    name: &'static str,
    seeds: Vec<Vec<u8>>,
    tokens: &'static [&'static str],
    /// The file the case is written to.
    path: PathBuf,
    /// Reads it; Ok(()) when it parsed, Err(message) when it was refused.
    read: Box<dyn Fn() -> Result<(), String>>,
}

fn readers(dir: &Path) -> Vec<Reader> {
    let classes: Vec<String> = ["dog", "person", "cat"].map(String::from).to_vec();
    let err = |e: anyhow::Error| format!("{e:#}");
    let voc = dir.join("voc");
    std::fs::create_dir_all(voc.join("Annotations")).unwrap();
    std::fs::create_dir_all(voc.join("ImageSets").join("Main")).unwrap();
    let comp4 = dir.join("comp4");
    std::fs::create_dir_all(&comp4).unwrap();
    let config_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut yaml_seeds: Vec<Vec<u8>> = std::fs::read_dir(&config_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    yaml_seeds.sort();
    yaml_seeds.push(
        b"name: x\nquant: {bits: 4, c: 3.7}\ntrain: {lr_steps: [1, 2], iterations: 5}\nmodel: {anchor_sizes: [8.0]}\n"
            .to_vec(),
    );
    let npy_seeds = vec![
        npy_seed(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }          \n",
            &[1.0, -2.0, 0.5, 0.0, 3.0, -0.25],
        ),
        npy_seed(
            "{'descr': '<f4', 'fortran_order': True, 'shape': (3, 2), }           \n",
            &[1.0, -2.0, 0.5, 0.0, 3.0, -0.25],
        ),
        npy_seed(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (), }              \n",
            &[7.5],
        ),
    ];

    let xml_path = lbwnet::data::voc::annotation_path(&voc, "000001");
    let labels_path = voc.join(lbwnet::data::voc::LABELS_FILE);
    let set_path = lbwnet::data::voc::image_set_path(&voc, "train");
    let comp4_path = lbwnet::eval::comp4_path(&comp4, "test", "person");
    let npy_path = dir.join("w.npy");
    let yaml_path = dir.join("config.yaml");
    vec![
        Reader {
            name: "VOC annotation XML",
            seeds: vec![XML.as_bytes().to_vec()],
            tokens: XML_TOKENS,
            path: xml_path.clone(),
            read: Box::new({
                let classes = classes.clone();
                move || {
                    lbwnet::data::voc::parse_annotation(&xml_path, "000001", &classes)
                        .map(drop)
                        .map_err(err)
                }
            }),
        },
        Reader {
            name: "labels.txt",
            seeds: vec![LABELS.as_bytes().to_vec()],
            tokens: TEXT_TOKENS,
            path: labels_path,
            read: Box::new({
                let voc = voc.clone();
                move || lbwnet::data::voc::read_labels(&voc).map(drop).map_err(err)
            }),
        },
        Reader {
            name: "ImageSets split",
            seeds: vec![IMAGE_SET.as_bytes().to_vec()],
            tokens: TEXT_TOKENS,
            path: set_path,
            read: Box::new(move || {
                lbwnet::data::voc::read_image_set(&voc, "train")
                    .map(drop)
                    .map_err(err)
            }),
        },
        Reader {
            name: "comp4 detections",
            seeds: vec![COMP4.as_bytes().to_vec()],
            tokens: TEXT_TOKENS,
            path: comp4_path,
            read: Box::new(move || {
                lbwnet::eval::read_comp4(&comp4, "test", &classes)
                    .map(drop)
                    .map_err(err)
            }),
        },
        Reader {
            name: ".npy",
            seeds: npy_seeds,
            tokens: NPY_TOKENS,
            path: npy_path.clone(),
            read: Box::new(move || lbwnet::npy::read_f32_npy(&npy_path).map(drop).map_err(err)),
        },
        Reader {
            name: "YAML config",
            seeds: yaml_seeds,
            tokens: YAML_TOKENS,
            path: yaml_path.clone(),
            read: Box::new(move || {
                ExperimentConfig::load(&yaml_path, &[])
                    .map(drop)
                    .map_err(err)
            }),
        },
    ]
}

/// Runs every reader on its seeds and `CASES_PER_READER` mutations; returns a line per
/// reader, or the failures.
fn fuzz(dir: &Path) -> Result<Vec<String>, Vec<String>> {
    let mut failures = Vec::new();
    let mut lines = Vec::new();
    for (k, reader) in readers(dir).iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(0x1b_0000 + k as u64);
        let (mut parsed, mut refused) = (0, 0);
        let started = Instant::now();
        for case in 0..reader.seeds.len() + CASES_PER_READER {
            let input = match reader.seeds.get(case) {
                Some(seed) => seed.clone(),
                None => mutate(
                    reader.seeds.choose(&mut rng).unwrap(),
                    reader.tokens,
                    &mut rng,
                ),
            };
            // A new file each time: rewriting one in place makes ext4 flush it on close.
            let _ = std::fs::remove_file(&reader.path);
            std::fs::write(&reader.path, &input).unwrap();
            let case_started = Instant::now();
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| (reader.read)()));
            let shown = String::from_utf8_lossy(&input[..input.len().min(300)]).into_owned();
            if case_started.elapsed() > Duration::from_secs(2) {
                failures.push(format!(
                    "{}: case {case} took {:?}: {shown:?}",
                    reader.name,
                    case_started.elapsed()
                ));
            }
            match outcome {
                Err(_) => {
                    failures.push(format!("{}: case {case} panicked: {shown:?}", reader.name))
                }
                Ok(Ok(())) => parsed += 1,
                Ok(Err(message)) => {
                    if case < reader.seeds.len() {
                        failures.push(format!("{}: seed {case} refused: {message}", reader.name));
                    } else if !message.contains(&reader.path.display().to_string()) {
                        failures.push(format!(
                            "{}: case {case}: the error does not name {}: {message}\ninput: {shown:?}",
                            reader.name,
                            reader.path.display()
                        ));
                    }
                    refused += 1;
                }
            }
        }
        lines.push(format!(
            "{}: {} inputs, {parsed} parsed, {refused} refused with the file named, {:.2} s",
            reader.name,
            reader.seeds.len() + CASES_PER_READER,
            started.elapsed().as_secs_f64()
        ));
    }
    if failures.is_empty() {
        Ok(lines)
    } else {
        Err(failures)
    }
}

#[test]
fn readers_never_panic_or_hang_on_damaged_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    // Panics are caught per case; keep their messages out of the output.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    std::thread::spawn(move || {
        let _ = tx.send(fuzz(&path));
    });
    let result = rx.recv_timeout(TIME_LIMIT);
    std::panic::set_hook(hook);
    match result {
        Err(_) => panic!("the fuzz run did not finish in {TIME_LIMIT:?}: a reader hangs"),
        Ok(Err(failures)) => panic!(
            "{} failing cases:\n{}",
            failures.len(),
            failures[..failures.len().min(20)].join("\n")
        ),
        Ok(Ok(lines)) => eprintln!("{}", lines.join("\n")),
    }
}
