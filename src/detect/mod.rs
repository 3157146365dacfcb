//! Faster R-CNN parts, one concept per file, each matching its torchvision counterpart
//! (SPEC §2).
pub mod anchors;
pub mod architecture;
pub mod box_coder;
pub mod box_ops;
pub mod faster_rcnn;
pub mod image_list;
pub mod matcher;
pub mod nms;
pub mod roi_align;
pub mod roi_head;
pub mod roi_pool;
pub mod roi_pooling;
pub mod rpn;
pub mod sampler;
