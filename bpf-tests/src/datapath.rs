//! The data-path kit: crafted frames and `BPF_PROG_TEST_RUN`.

pub mod frames;
pub mod testrun;
