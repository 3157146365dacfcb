//! Faster R-CNN parts, one concept per file, in the spirit of torchvision's detection
//! package.
pub mod faster_rcnn;
pub mod roi_head;
pub mod rpn;
