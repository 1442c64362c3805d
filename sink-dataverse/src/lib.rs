//! sink-dataverse
