//! (issue 16: to be written.)
