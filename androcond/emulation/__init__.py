"""An x86_64 container run emulated under a device's qemu-x86_64, the host's side (docs/emulation.md): what a
live process may not take along (`live`), which CPU features it may have chosen and what an emulator offers
(`cpu`), the restorer's plan made from a CRIU dump (`plan`), and the restorer itself (`restorer.c`, `build`)."""
