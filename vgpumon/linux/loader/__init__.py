"""A pure-Python model of the dynamic loader: ELF files, ld.so.cache, and resolution as ld.so does
it."""
