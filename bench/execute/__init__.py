"""Stage 4: turn a cell into a runnable step: build, mode, precision, layout, compile, release."""
