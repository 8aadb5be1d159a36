//! sumflow
