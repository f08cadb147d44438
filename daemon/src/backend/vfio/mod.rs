//! VFIO devices.
