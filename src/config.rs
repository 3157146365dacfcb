//! Typed experiment configuration, read from YAML with `--set key.path=value` overrides.
//!
//! Defaults are py-faster-rcnn's end-to-end VOC settings (SPEC §2); a config file only
//! needs what differs. Unknown keys are refused, and validation errors name the file, the
//! key and what is allowed.
pub mod synthetic;

use crate::quant::{Method, FLOAT_BITS};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
pub use synthetic::SyntheticConfig;

/// Output stride of every backbone's trunk.
pub const TRUNK_STRIDE: i64 = 16;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Run name: the run directory is `<train.output_dir>/<name>`.
    pub name: String,
    #[serde(default)]
    pub data: DataConfig,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub quant: QuantConfig,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub eval: EvalConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// VOC-layout root (the folder holding Annotations/, JPEGImages/, ImageSets/).
    pub root: PathBuf,
    pub train_split: String,
    pub test_split: String,
    /// Class names; when absent, `labels.txt` in the root or the 20 VOC classes.
    pub classes: Option<Vec<String>>,
    /// Shorter image side after resizing.
    pub min_size: u32,
    /// Cap on the longer side after resizing.
    pub max_size: u32,
    /// Random horizontal flip in training.
    pub flip: bool,
    pub normalization: Normalization,
    /// Background threads decoding and resizing images.
    pub loader_threads: usize,
    /// Bound on decoded images waiting for the training loop.
    pub queue_size: usize,
    /// When set, the data set is generated at `root` if it is missing.
    pub synthetic: Option<SyntheticConfig>,
    /// `voc` (the layout under `root`) or `coco` (instances JSON files, `coco`). Written
    /// to `config.yaml` only when `coco`: a saved config from before the key reads VOC.
    #[serde(skip_serializing_if = "DataFormat::is_voc")]
    pub format: DataFormat,
    /// The COCO-format files (`format: coco`); each path left out defaults under `root`
    /// (see [`CocoPaths`]). Written to `config.yaml` only when a path is set.
    #[serde(skip_serializing_if = "CocoPaths::is_empty")]
    pub coco: CocoPaths,
}

/// How a data set's annotations are stored.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// PASCAL VOC: `Annotations/<id>.xml`, `ImageSets/Main/<split>.txt`, `JPEGImages/`
    /// under `data.root` (SPEC §3).
    #[default]
    Voc,
    /// COCO instances JSON (`images`, `annotations`, `categories`), one file per split,
    /// boxes converted as SPEC §3 says.
    Coco,
}

impl DataFormat {
    pub fn is_voc(&self) -> bool {
        *self == DataFormat::Voc
    }
}

/// `data.coco`: where a COCO-format data set's files are. A path left out defaults under
/// `data.root`: `annotations/instances_<split>.json` for `train`/`test` (the split names
/// of `data.train_split`/`data.test_split`) and `root` itself for `images` (where
/// `lbwnet gen-data --format coco` puts the synthetic set's files).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CocoPaths {
    /// The training split's instances JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train: Option<PathBuf>,
    /// The test split's instances JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<PathBuf>,
    /// The folder every image's `file_name` is relative to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images: Option<PathBuf>,
    /// The test split's image folder when it is another one (COCO's own `val2017/`
    /// beside `train2017/`); defaults to `images`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_images: Option<PathBuf>,
}

impl CocoPaths {
    pub fn is_empty(&self) -> bool {
        *self == CocoPaths::default()
    }
}

/// The two splits a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitRole {
    Train,
    Test,
}

impl DataConfig {
    /// The split name of `role` (`train_split` or `test_split`).
    pub fn split_name(&self, role: SplitRole) -> &str {
        match role {
            SplitRole::Train => &self.train_split,
            SplitRole::Test => &self.test_split,
        }
    }

    /// The default instances JSON of a split under `root` (`data.coco` unset).
    pub fn default_coco_json(root: &Path, split: &str) -> PathBuf {
        root.join("annotations")
            .join(format!("instances_{split}.json"))
    }

    /// `format: coco`: the instances JSON of `role` (`data.coco.train`/`test`, else the
    /// default under `root`).
    pub fn coco_json(&self, role: SplitRole) -> PathBuf {
        let set = match role {
            SplitRole::Train => &self.coco.train,
            SplitRole::Test => &self.coco.test,
        };
        set.clone()
            .unwrap_or_else(|| Self::default_coco_json(&self.root, self.split_name(role)))
    }

    /// `format: coco`: the folder the `file_name`s of `role`'s images are relative to.
    pub fn coco_images(&self, role: SplitRole) -> PathBuf {
        let images = self
            .coco
            .images
            .clone()
            .unwrap_or_else(|| self.root.clone());
        match role {
            SplitRole::Train => images,
            SplitRole::Test => self.coco.test_images.clone().unwrap_or(images),
        }
    }

    /// The key naming `role`'s instances JSON, for messages.
    pub fn coco_json_key(&self, role: SplitRole) -> &'static str {
        match role {
            SplitRole::Train => "data.coco.train",
            SplitRole::Test => "data.coco.test",
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("VOCdevkit/VOC2007"),
            train_split: "trainval".into(),
            test_split: "test".into(),
            classes: None,
            min_size: 600,
            max_size: 1000,
            flip: true,
            normalization: Normalization::Torchvision,
            loader_threads: 2,
            queue_size: 8,
            synthetic: None,
            format: DataFormat::Voc,
            coco: CocoPaths::default(),
        }
    }
}

/// Pixel normalization of the backbone's pretraining.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Normalization {
    /// RGB in [0, 1], ImageNet mean/std (torchvision weights).
    Torchvision,
    /// BGR in [0, 255] minus the Caffe pixel means (py-faster-rcnn weights).
    Caffe,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backbone {
    /// A few conv layers, stride 16: the CPU-scale default.
    Small,
    Vgg16,
    Resnet50,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub backbone: Backbone,
    /// Width multiplier of the small backbone's channels.
    pub small_width: i64,
    /// torchvision-named weights (safetensors) loaded into the backbone by name.
    pub backbone_weights: Option<PathBuf>,
    /// Anchor sizes in pixels at image scale.
    pub anchor_sizes: Vec<f64>,
    /// Anchor aspect ratios (height / width).
    pub anchor_ratios: Vec<f64>,
    pub feature_stride: i64,
    pub rpn: RpnConfig,
    pub roi: RoiConfig,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            backbone: Backbone::Vgg16,
            small_width: 32,
            backbone_weights: None,
            anchor_sizes: vec![128.0, 256.0, 512.0],
            anchor_ratios: vec![0.5, 1.0, 2.0],
            feature_stride: 16,
            rpn: RpnConfig::default(),
            roi: RoiConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RpnConfig {
    /// Channels of the RPN's 3x3 conv.
    pub channels: i64,
    pub fg_iou: f64,
    pub bg_iou: f64,
    pub batch_size_per_image: usize,
    pub positive_fraction: f64,
    pub pre_nms_top_n_train: usize,
    pub post_nms_top_n_train: usize,
    pub pre_nms_top_n_test: usize,
    pub post_nms_top_n_test: usize,
    pub nms_thresh: f64,
    /// Minimum proposal side in pixels at image scale.
    pub min_size: f64,
    /// Smooth-L1 sigma of the RPN box loss.
    pub smooth_l1_sigma: f64,
    /// The proposal layer's NMS implementation: `auto` (the default), `host`, `mask` or
    /// `blocks`; all keep the same boxes (`detect::nms::NmsBackend`, README "GPU"). Written
    /// to `config.yaml` only when not `auto`: a saved config from before the key means
    /// `auto`, so such runs stay reusable by sweeps.
    #[serde(skip_serializing_if = "NmsBackend::is_auto")]
    pub nms_backend: NmsBackend,
}

impl Default for RpnConfig {
    fn default() -> Self {
        Self {
            channels: 512,
            fg_iou: 0.7,
            bg_iou: 0.3,
            batch_size_per_image: 256,
            positive_fraction: 0.5,
            pre_nms_top_n_train: 12000,
            post_nms_top_n_train: 2000,
            pre_nms_top_n_test: 6000,
            post_nms_top_n_test: 300,
            nms_thresh: 0.7,
            min_size: 16.0,
            smooth_l1_sigma: 3.0,
            nms_backend: NmsBackend::Auto,
        }
    }
}

/// Which implementation runs NMS (`model.rpn.nms_backend` for the proposal layer). All
/// keep the same boxes; they differ in speed only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NmsBackend {
    /// `host` for CPU tensors, `mask` for GPU tensors (`detect::nms`'s `resolve`, README
    /// "GPU").
    #[default]
    Auto,
    /// Greedy scan over host copies of the boxes.
    Host,
    /// The full suppression mask on the boxes' device, scanned on the host.
    Mask,
    /// Block by block on the boxes' device (`detect::nms::blocked_nms`, `NMS_BLOCK` boxes
    /// a block), scanned on the host; stops at `max_keep`.
    Blocks,
}

impl NmsBackend {
    pub const ALL: [NmsBackend; 4] = [Self::Auto, Self::Host, Self::Mask, Self::Blocks];

    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Host => "host",
            Self::Mask => "mask",
            Self::Blocks => "blocks",
        }
    }

    pub fn is_auto(&self) -> bool {
        *self == Self::Auto
    }
}

impl std::fmt::Display for NmsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Pooler {
    RoiAlign,
    RoiPool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoiConfig {
    pub pooler: Pooler,
    /// Bilinear samples per bin side; 0 means adaptive, as torchvision.
    pub sampling_ratio: i64,
    pub aligned: bool,
    pub batch_size_per_image: usize,
    pub positive_fraction: f64,
    pub fg_iou: f64,
    pub bg_iou_hi: f64,
    pub bg_iou_lo: f64,
    /// Box-target normalization, as weights (10, 10, 5, 5) = 1 / (0.1, 0.1, 0.2, 0.2).
    pub box_weights: [f64; 4],
    /// Hidden width of the small backbone's two-fc head.
    pub head_hidden: i64,
    pub smooth_l1_sigma: f64,
}

impl Default for RoiConfig {
    fn default() -> Self {
        Self {
            pooler: Pooler::RoiAlign,
            sampling_ratio: 2,
            aligned: false,
            batch_size_per_image: 128,
            positive_fraction: 0.25,
            fg_iou: 0.5,
            bg_iou_hi: 0.5,
            bg_iou_lo: 0.0,
            box_weights: [10.0, 10.0, 5.0, 5.0],
            head_hidden: 1024,
            smooth_l1_sigma: 1.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QuantConfig {
    /// 2..=8, or 32 for no quantization.
    pub bits: u32,
    pub method: Method,
    /// LBW's free parameter; when absent, the default for the bit-width (SPEC §1.3).
    pub c: Option<f64>,
    /// Keep the backbone's first conv in float.
    pub float_first_conv: bool,
    /// Keep the final class and box predictors in float.
    pub float_predictors: bool,
}

impl Default for QuantConfig {
    fn default() -> Self {
        Self {
            bits: FLOAT_BITS,
            method: Method::Lbw,
            c: None,
            float_first_conv: false,
            float_predictors: false,
        }
    }
}

impl QuantConfig {
    pub fn is_float(&self) -> bool {
        self.bits == FLOAT_BITS
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when available, else CPU.
    Auto,
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub iterations: usize,
    pub lr: f64,
    /// Iterations at which the learning rate is multiplied by `gamma`.
    pub lr_steps: Vec<usize>,
    pub gamma: f64,
    pub warmup_iterations: usize,
    /// Learning-rate factor at the first warm-up iteration, ramping linearly to 1.
    pub warmup_factor: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Images per iteration.
    pub batch_size: usize,
    pub seed: u64,
    /// Write a checkpoint every this many iterations (0: only at the end).
    pub checkpoint_interval: usize,
    /// Start from another run's checkpoint (a run directory or a .safetensors file).
    pub init_from: Option<PathBuf>,
    pub log_interval: usize,
    pub device: DeviceChoice,
    /// Run directories land in `<output_dir>/<name>`.
    pub output_dir: PathBuf,
    /// Gradient-norm clip (0: none); guards the first float iterations from scratch.
    pub clip_grad_norm: f64,
    /// libtorch CPU threads (0: libtorch's default). Small models on few cores run
    /// faster on one: thread barriers cost more than the work they split.
    pub threads: usize,
    /// libtorch's deterministic algorithms (matters on CUDA; CPU runs are reproducible
    /// from `seed` alone). Turns TF32 off whatever `tf32` says.
    pub deterministic: bool,
    /// TF32 on CUDA as PyTorch's defaults have it: cuDNN convolutions may round their inputs
    /// to TF32 (10-bit mantissa), cuBLAS matmuls stay IEEE float32. `false`: both IEEE
    /// float32. No effect on the CPU. Off under `deterministic` (README "GPU"). Written to
    /// `config.yaml` only when `false`: a saved config from before the key ran with
    /// PyTorch's default, which is `true`.
    #[serde(skip_serializing_if = "is_true")]
    pub tf32: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            iterations: 70_000,
            lr: 1e-3,
            lr_steps: vec![50_000],
            gamma: 0.1,
            warmup_iterations: 500,
            warmup_factor: 1.0 / 3.0,
            momentum: 0.9,
            weight_decay: 5e-4,
            batch_size: 1,
            seed: 0,
            checkpoint_interval: 10_000,
            init_from: None,
            log_interval: 20,
            device: DeviceChoice::Auto,
            output_dir: PathBuf::from("runs"),
            clip_grad_norm: 0.0,
            threads: 0,
            deterministic: false,
            tf32: true,
        }
    }
}

fn is_true(value: &bool) -> bool {
    *value
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ApMetric {
    /// VOC2007 11-point interpolated AP.
    Voc07,
    /// VOC2010+ area under the monotone precision-recall curve.
    Area,
    /// COCO AP@[.5:.95] as pycocotools' COCOeval (difficult objects are crowds).
    Coco,
}

impl ApMetric {
    pub fn name(self) -> &'static str {
        match self {
            ApMetric::Voc07 => "voc07",
            ApMetric::Area => "area",
            ApMetric::Coco => "coco",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    pub metric: ApMetric,
    pub score_thresh: f64,
    pub nms_thresh: f64,
    pub detections_per_image: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            metric: ApMetric::Voc07,
            score_thresh: 0.05,
            nms_thresh: 0.3,
            detections_per_image: 100,
        }
    }
}

impl ExperimentConfig {
    /// Reads `path`, applies `--set key.path=value` overrides, and validates. Every error
    /// names the file and, where there is one, the key.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Self::from_yaml_str(&text, overrides, path)
    }

    /// Parses YAML `text` (which came from `origin`, named in errors).
    pub fn from_yaml_str(text: &str, overrides: &[String], origin: &Path) -> Result<Self> {
        let mut value: serde_yaml::Value = serde_yaml::from_str(text)
            .with_context(|| format!("config {}: not valid YAML", origin.display()))?;
        for item in overrides {
            apply_override(&mut value, item)
                .with_context(|| format!("config {}: --set {item}", origin.display()))?;
        }
        let config: Self = serde_path_to_error::deserialize(value).map_err(|err| {
            let key = err.path().to_string();
            anyhow::anyhow!("config {}: key `{key}`: {}", origin.display(), err.inner())
        })?;
        config
            .validate()
            .with_context(|| format!("config {}", origin.display()))?;
        Ok(config)
    }

    /// Value checks that the types alone cannot express: every numeric key is checked
    /// against its allowed range here, before anything is built, so no value of any key
    /// reaches libtorch or an allocation it would fail on (a panic). Each error names the
    /// key, the value and what is allowed.
    pub fn validate(&self) -> Result<()> {
        crate::fsutil::check_name(&self.name).context("key `name` (the run's directory)")?;
        for (key, split) in [
            ("data.train_split", &self.data.train_split),
            ("data.test_split", &self.data.test_split),
        ] {
            crate::fsutil::check_name(split).with_context(|| format!("key `{key}`"))?;
        }
        for class in self.data.classes.iter().flatten() {
            crate::fsutil::check_name(class).context("key `data.classes`")?;
        }
        self.validate_data()?;
        self.validate_model()?;
        self.validate_quant()?;
        self.validate_train()?;
        self.validate_eval()
    }

    fn validate_quant(&self) -> Result<()> {
        let q = &self.quant;
        if !(2..=8).contains(&q.bits) && q.bits != FLOAT_BITS {
            bail!(
                "key `quant.bits`: {} is not allowed; use 2..=8, or 32 for float",
                q.bits
            );
        }
        if let Some(c) = q.c {
            if !is_positive(c) || c > MAX_C {
                bail!("key `quant.c`: {c} is not allowed; c must be a positive number, at most {MAX_C}");
            }
        }
        if matches!(q.method, Method::Ternary | Method::Twn) && q.bits != 2 && !q.is_float() {
            bail!(
                "key `quant.method`: {} is ternary; it needs quant.bits = 2, not {}",
                q.method,
                q.bits
            );
        }
        Ok(())
    }

    fn validate_data(&self) -> Result<()> {
        let d = &self.data;
        int_in("data.min_size", d.min_size, 1, MAX_IMAGE_SIDE)?;
        int_in("data.max_size", d.max_size, 1, MAX_IMAGE_SIDE)?;
        if d.max_size < d.min_size {
            bail!(
                "keys `data.min_size`/`data.max_size`: need min_size <= max_size, got {} and {}",
                d.min_size,
                d.max_size
            );
        }
        int_in("data.loader_threads", d.loader_threads, 0, MAX_THREADS)?;
        int_in("data.queue_size", d.queue_size, 0, 4096)?;
        if let Some(classes) = &d.classes {
            if classes.is_empty() {
                bail!("key `data.classes`: the class list is empty");
            }
        }
        if !d.coco.is_empty() {
            if d.format != DataFormat::Coco {
                bail!("key `data.coco`: COCO files are read with `data.format: coco`, and data.format is voc");
            }
            if d.synthetic.is_some() {
                bail!("keys `data.coco`/`data.synthetic`: a synthetic set is read as COCO from its own files under data.root; set `data.synthetic: null` to read the files data.coco names");
            }
        }
        if let Some(s) = &d.synthetic {
            int_in("data.synthetic.train", s.train, 1, MAX_SYNTHETIC_IMAGES)?;
            int_in("data.synthetic.test", s.test, 1, MAX_SYNTHETIC_IMAGES)?;
            s.validate()?;
        }
        Ok(())
    }

    fn validate_model(&self) -> Result<()> {
        let m = &self.model;
        int_in("model.small_width", m.small_width, 1, 1024)?;
        if m.feature_stride != TRUNK_STRIDE {
            bail!(
                "key `model.feature_stride`: {} is not supported; every backbone has stride {}",
                m.feature_stride,
                TRUNK_STRIDE
            );
        }
        if m.anchor_sizes.is_empty() || m.anchor_ratios.is_empty() {
            bail!("keys `model.anchor_sizes`/`model.anchor_ratios`: need at least one value each");
        }
        for &v in &m.anchor_sizes {
            float_in("model.anchor_sizes", v, Bound::Above(0.0), 1e5)?;
        }
        for &v in &m.anchor_ratios {
            float_in("model.anchor_ratios", v, Bound::AtLeast(1e-3), 1e3)?;
        }
        let r = &m.rpn;
        int_in("model.rpn.channels", r.channels, 1, 8192)?;
        float_in("model.rpn.fg_iou", r.fg_iou, Bound::AtLeast(0.0), 1.0)?;
        // Negative anchors are those below bg_iou: at 0 there are none.
        float_in("model.rpn.bg_iou", r.bg_iou, Bound::Above(0.0), 1.0)?;
        if r.bg_iou > r.fg_iou {
            bail!(
                "keys `model.rpn.bg_iou`/`model.rpn.fg_iou`: need bg_iou <= fg_iou, got {} and {}",
                r.bg_iou,
                r.fg_iou
            );
        }
        int_in(
            "model.rpn.batch_size_per_image",
            r.batch_size_per_image,
            1,
            MAX_COUNT,
        )?;
        float_in(
            "model.rpn.positive_fraction",
            r.positive_fraction,
            Bound::Above(0.0),
            1.0,
        )?;
        for (key, v) in [
            ("model.rpn.pre_nms_top_n_train", r.pre_nms_top_n_train),
            ("model.rpn.post_nms_top_n_train", r.post_nms_top_n_train),
            ("model.rpn.pre_nms_top_n_test", r.pre_nms_top_n_test),
            ("model.rpn.post_nms_top_n_test", r.post_nms_top_n_test),
        ] {
            int_in(key, v, 1, MAX_COUNT)?;
        }
        float_in(
            "model.rpn.nms_thresh",
            r.nms_thresh,
            Bound::AtLeast(0.0),
            1.0,
        )?;
        float_in("model.rpn.min_size", r.min_size, Bound::AtLeast(0.0), 1e5)?;
        float_in(
            "model.rpn.smooth_l1_sigma",
            r.smooth_l1_sigma,
            Bound::Above(0.0),
            1e3,
        )?;
        let h = &m.roi;
        int_in("model.roi.sampling_ratio", h.sampling_ratio, 0, 64)?;
        int_in(
            "model.roi.batch_size_per_image",
            h.batch_size_per_image,
            1,
            MAX_COUNT,
        )?;
        float_in(
            "model.roi.positive_fraction",
            h.positive_fraction,
            Bound::Above(0.0),
            1.0,
        )?;
        float_in("model.roi.fg_iou", h.fg_iou, Bound::AtLeast(0.0), 1.0)?;
        float_in("model.roi.bg_iou_hi", h.bg_iou_hi, Bound::AtLeast(0.0), 1.0)?;
        float_in("model.roi.bg_iou_lo", h.bg_iou_lo, Bound::AtLeast(0.0), 1.0)?;
        // Background RoIs have an IoU in [bg_iou_lo, bg_iou_hi): it must not be empty.
        if h.bg_iou_lo >= h.bg_iou_hi {
            bail!(
                "keys `model.roi.bg_iou_lo`/`model.roi.bg_iou_hi`: need bg_iou_lo < bg_iou_hi, got {} and {}",
                h.bg_iou_lo,
                h.bg_iou_hi
            );
        }
        for &v in &h.box_weights {
            float_in("model.roi.box_weights", v, Bound::Above(0.0), 1e3)?;
        }
        int_in("model.roi.head_hidden", h.head_hidden, 1, 65536)?;
        float_in(
            "model.roi.smooth_l1_sigma",
            h.smooth_l1_sigma,
            Bound::Above(0.0),
            1e3,
        )?;
        Ok(())
    }

    fn validate_train(&self) -> Result<()> {
        let t = &self.train;
        int_in("train.iterations", t.iterations, 1, MAX_ITERATIONS)?;
        float_in("train.lr", t.lr, Bound::Above(0.0), 10.0)?;
        float_in("train.gamma", t.gamma, Bound::Above(0.0), 1.0)?;
        float_in(
            "train.warmup_factor",
            t.warmup_factor,
            Bound::AtLeast(0.0),
            1.0,
        )?;
        if !(0.0..1.0).contains(&t.momentum) {
            bail!(
                "key `train.momentum`: {} is not allowed; use 0 <= momentum < 1",
                t.momentum
            );
        }
        if !(0.0..1.0).contains(&t.weight_decay) {
            bail!(
                "key `train.weight_decay`: {} is not allowed; use 0 <= weight_decay < 1",
                t.weight_decay
            );
        }
        int_in("train.batch_size", t.batch_size, 1, 1024)?;
        float_in(
            "train.clip_grad_norm",
            t.clip_grad_norm,
            Bound::AtLeast(0.0),
            f64::MAX,
        )?;
        int_in("train.threads", t.threads, 0, MAX_THREADS)?;
        // lr_steps, warmup_iterations, seed, checkpoint_interval and log_interval take any
        // value of their type: past the last iteration they simply never apply.
        Ok(())
    }

    fn validate_eval(&self) -> Result<()> {
        let e = &self.eval;
        float_in(
            "eval.score_thresh",
            e.score_thresh,
            Bound::AtLeast(0.0),
            1.0,
        )?;
        float_in("eval.nms_thresh", e.nms_thresh, Bound::AtLeast(0.0), 1.0)?;
        int_in(
            "eval.detections_per_image",
            e.detections_per_image,
            1,
            MAX_COUNT,
        )?;
        Ok(())
    }

    /// Checks that the data set exists, or can be generated.
    pub fn check_data_path(&self) -> Result<()> {
        if self.data.format == DataFormat::Coco {
            // Evaluation reads the test split only; training checks both (`check_paths`).
            return self.check_coco_paths(SplitRole::Test);
        }
        if self.data.synthetic.is_none() && !self.data.root.is_dir() {
            bail!(
                "key `data.root`: data set directory {} does not exist (point it at a VOCdevkit/VOC2007-style folder)",
                self.data.root.display()
            );
        }
        Ok(())
    }

    /// `format: coco`: checks that `role`'s instances JSON and image folder exist (a
    /// synthetic set writes its COCO files on demand).
    fn check_coco_paths(&self, role: SplitRole) -> Result<()> {
        if self.data.synthetic.is_some() {
            return Ok(());
        }
        let json = self.data.coco_json(role);
        let defaulted = match role {
            SplitRole::Train => self.data.coco.train.is_none(),
            SplitRole::Test => self.data.coco.test.is_none(),
        };
        if !json.is_file() {
            bail!(
                "key `{}`: COCO instances file {} does not exist{}",
                self.data.coco_json_key(role),
                json.display(),
                if defaulted {
                    " (the key is not set, so this is its default under data.root)"
                } else {
                    ""
                }
            );
        }
        let images = self.data.coco_images(role);
        if !images.is_dir() {
            let key = match role {
                SplitRole::Test if self.data.coco.test_images.is_some() => "data.coco.test_images",
                _ => "data.coco.images",
            };
            bail!(
                "key `{key}`: image folder {} does not exist",
                images.display()
            );
        }
        Ok(())
    }

    /// Checks that the paths the config names exist; run by the commands that read them.
    /// A synthetic data set may be missing: it is generated on demand.
    pub fn check_paths(&self) -> Result<()> {
        self.check_data_path()?;
        if self.data.format == DataFormat::Coco {
            self.check_coco_paths(SplitRole::Train)?;
        }
        if let Some(w) = &self.model.backbone_weights {
            if !w.is_file() {
                bail!(
                    "key `model.backbone_weights`: file {} does not exist",
                    w.display()
                );
            }
        }
        if let Some(p) = &self.train.init_from {
            if !p.exists() {
                bail!("key `train.init_from`: {} does not exist", p.display());
            }
        }
        Ok(())
    }

    /// LBW's `c`: the configured one or the bit-width's default.
    pub fn effective_c(&self) -> Option<f64> {
        if self.quant.is_float() {
            return None;
        }
        self.quant
            .c
            .or_else(|| crate::quant::default_c(self.quant.bits))
    }

    /// The quantizer of every quantized layer, `None` for a float model.
    pub fn quant_spec(&self) -> Result<Option<crate::quant::QuantSpec>> {
        if self.quant.is_float() {
            return Ok(None);
        }
        let c = match (self.quant.method, self.effective_c()) {
            (_, Some(c)) => c,
            (Method::Lbw, None) => bail!(
                "key `quant.c`: lbw at {} bits has no default c; set one",
                self.quant.bits
            ),
            // The other methods do not use c.
            (_, None) => 0.0,
        };
        Ok(Some(crate::quant::QuantSpec {
            method: self.quant.method,
            bits: self.quant.bits,
            c,
        }))
    }

    /// Short tag of the quantization setting: `fp32`, `w6-lbw-c7.2`, `w2-ternary`.
    pub fn quant_tag(&self) -> String {
        if self.quant.is_float() {
            return "fp32".to_string();
        }
        match (self.quant.method, self.effective_c()) {
            (Method::Lbw, Some(c)) => format!("w{}-lbw-c{c}", self.quant.bits),
            (method, _) => format!("w{}-{method}", self.quant.bits),
        }
    }

    /// The run directory of this experiment: `<output_dir>/<name>/<quant tag>`, so runs at
    /// different bit-widths never overwrite each other.
    pub fn run_dir(&self) -> PathBuf {
        self.train
            .output_dir
            .join(&self.name)
            .join(self.quant_tag())
    }

    pub fn to_yaml(&self) -> Result<String> {
        Ok(serde_yaml::to_string(self)?)
    }
}

/// A finite number above zero (NaN is not).
pub fn is_positive(v: f64) -> bool {
    v > 0.0 && v.is_finite()
}

/// Upper bounds of the numeric keys (beyond them a value is a typo, or would exhaust
/// memory or threads rather than train).
/// The largest image side a config (or a model file) may resize to.
pub const MAX_IMAGE_SIDE: u32 = 8192;
const MAX_THREADS: usize = 1024;
const MAX_COUNT: usize = 10_000_000;
const MAX_ITERATIONS: usize = 1_000_000_000;
const MAX_SYNTHETIC_IMAGES: usize = 10_000_000;
const MAX_C: f64 = 1000.0;

/// The lower end of a float range.
#[derive(Clone, Copy)]
enum Bound {
    /// Exclusive.
    Above(f64),
    /// Inclusive.
    AtLeast(f64),
}

/// `key`'s value `v` must be finite, within the lower `bound` and at most `max`.
fn float_in(key: &str, v: f64, bound: Bound, max: f64) -> Result<()> {
    let (low_ok, low) = match bound {
        Bound::Above(lo) => (v > lo, format!("above {lo}")),
        Bound::AtLeast(lo) => (v >= lo, format!("at least {lo}")),
    };
    if !(v.is_finite() && low_ok && v <= max) {
        let high = if max == f64::MAX {
            "finite".to_string()
        } else {
            format!("at most {max}")
        };
        bail!("key `{key}`: {v} is not allowed; use a number {low} and {high}");
    }
    Ok(())
}

/// `key`'s integer value `v` must lie in `lo..=hi`.
fn int_in<T>(key: &str, v: T, lo: T, hi: T) -> Result<()>
where
    T: PartialOrd + std::fmt::Display + Copy,
{
    if v < lo || v > hi {
        bail!("key `{key}`: {v} is not allowed; use {lo}..={hi}");
    }
    Ok(())
}

/// Sets `key.path=value` inside a YAML tree, creating mappings on the way; the value is
/// parsed as YAML (`4`, `0.5`, `true`, `[1, 2]`, `lbw`).
pub(crate) fn apply_override(root: &mut serde_yaml::Value, item: &str) -> Result<()> {
    let (key, raw) = item
        .split_once('=')
        .with_context(|| "expected KEY=VALUE, e.g. quant.bits=4".to_string())?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        bail!("`{key}` is not a key path like quant.bits");
    }
    let value: serde_yaml::Value =
        serde_yaml::from_str(raw).with_context(|| format!("value `{raw}` is not valid YAML"))?;
    let mut node = root;
    for part in key.split('.') {
        if node.is_null() {
            *node = serde_yaml::Value::Mapping(Default::default());
        }
        let map = node.as_mapping_mut().with_context(|| {
            format!("key `{key}`: `{part}` is inside a value that is not a mapping")
        })?;
        node = map
            .entry(serde_yaml::Value::String(part.to_string()))
            .or_insert(serde_yaml::Value::Null);
    }
    *node = value;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, sets: &[&str]) -> Result<ExperimentConfig> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        ExperimentConfig::from_yaml_str(text, &sets, Path::new("test.yaml"))
    }

    #[test]
    fn defaults_follow_py_faster_rcnn() {
        let c = parse("name: x\n", &[]).unwrap();
        assert_eq!(c.model.rpn.pre_nms_top_n_train, 12000);
        assert_eq!(c.model.rpn.post_nms_top_n_test, 300);
        assert_eq!(c.model.roi.batch_size_per_image, 128);
        assert_eq!(c.eval.nms_thresh, 0.3);
        assert!(c.quant.is_float());
    }

    #[test]
    fn overrides_apply_and_create_nested_keys() {
        let c = parse(
            "name: x\nquant: {bits: 6}\n",
            &["quant.bits=4", "quant.c=3.7", "train.lr_steps=[10, 20]"],
        )
        .unwrap();
        assert_eq!(c.quant.bits, 4);
        assert_eq!(c.quant.c, Some(3.7));
        assert_eq!(c.train.lr_steps, vec![10, 20]);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = format!(
            "{:#}",
            parse("name: x\nquant: {bitz: 4}\n", &[]).unwrap_err()
        );
        assert!(
            err.contains("quant.bitz") && err.contains("test.yaml"),
            "{err}"
        );
        let err = format!("{:#}", parse("name: x\n", &["train.iters=3"]).unwrap_err());
        assert!(err.contains("train.iters"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_with_the_key() {
        for (sets, key) in [
            (["quant.bits=9"], "quant.bits"),
            (["quant.bits=1"], "quant.bits"),
            (["quant.c=0"], "quant.c"),
            (["quant.c=-1.5"], "quant.c"),
        ] {
            let err = format!("{:#}", parse("name: x\n", &sets).unwrap_err());
            assert!(err.contains(key) && err.contains("test.yaml"), "{err}");
        }
        assert!(parse("name: x\n", &["quant.bits=32"]).is_ok());
        let err = format!(
            "{:#}",
            parse("name: x\n", &["quant.method=lbww"]).unwrap_err()
        );
        assert!(err.contains("quant.method"), "{err}");
    }

    #[test]
    fn missing_data_root_is_named() {
        let c = parse("name: x\ndata: {root: /no/such/dir}\n", &[]).unwrap();
        let err = format!("{:#}", c.check_paths().unwrap_err());
        assert!(
            err.contains("data.root") && err.contains("/no/such/dir"),
            "{err}"
        );
    }

    #[test]
    fn shipped_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                ExperimentConfig::load(&path, &[]).unwrap_or_else(|e| panic!("{e:#}"));
            }
        }
    }

    #[test]
    fn malformed_override_is_refused() {
        assert!(parse("name: x\n", &["quant.bits"]).is_err());
        assert!(parse("name: x\n", &["quant..bits=3"]).is_err());
    }
}
