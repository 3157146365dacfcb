//! Data: the PASCAL VOC reader, image/box transforms, the background-threaded loader, and
//! the synthetic data set in the VOC layout (SPEC §3, §4).
pub mod loader;
pub mod synthetic;
pub mod transforms;
pub mod voc;

pub use loader::{load_sample, Loader, LoaderConfig, Sample};
pub use synthetic::{ensure_synthetic, SYNTHETIC_CLASSES};
pub use voc::{VocAnnotation, VocDataset, VocObject, VOC_CLASSES};
