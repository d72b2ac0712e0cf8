"""External programs, one module each: build the command line (a CommandSpec) and parse what it writes.

Results use the same keys as the built-in engines (motion: shifts_px, total_motion_a, ...; CTF:
defocus_u_a, ...; picking: coordinates_px, figures_of_merit), so a stage can swap engine and tool.
Which versions each module supports, and how it was tested, is in SUPPORT.md.
"""
