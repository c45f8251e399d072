//! Shared pieces of the Stratus fuzz targets: how an input is cut into reads, and an
//! allocator that measures the peak memory of a call.
//!
//! Every target checks split invariance (bytes fed in arbitrary reads give the same
//! result as the same bytes in one read), so the cutting lives here once.

pub mod peak_alloc;
pub mod reads;

pub use peak_alloc::PeakAlloc;
pub use reads::Reads;
