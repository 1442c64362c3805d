//! dataverse-emulator
