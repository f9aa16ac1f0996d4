//! weir-infra
