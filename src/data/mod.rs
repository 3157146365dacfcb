//! Data: the data set of a split ([`Dataset`]) read from the PASCAL VOC layout or a COCO
//! instances file, image/box transforms, the background-threaded loader, and the
//! synthetic data set in the VOC layout, also written as COCO (SPEC §3, §4).
pub mod coco;
pub mod dataset;
pub mod loader;
pub mod synthetic;
pub mod transforms;
pub mod voc;

pub use dataset::Dataset;
pub use loader::{load_sample, Loader, LoaderConfig, Sample};
pub use synthetic::{ensure_synthetic, SYNTHETIC_CLASSES};
pub use voc::{VocAnnotation, VocDataset, VocObject, VOC_CLASSES};
