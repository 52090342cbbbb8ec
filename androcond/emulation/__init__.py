"""Running an x86_64 container emulated under a device's qemu-x86_64: what decides whether it can move."""
