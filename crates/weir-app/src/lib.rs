//! weir-app
