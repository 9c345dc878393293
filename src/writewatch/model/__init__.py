"""An executable model of the kernel's write-tracking mechanisms and of the designs debated
for them (see docs/model.md)."""
