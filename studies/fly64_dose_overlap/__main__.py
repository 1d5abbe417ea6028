"""`python -m studies.fly64_dose_overlap` is the `fly64` command."""

from studies.fly64_dose_overlap.cli import main

main(prog_name="fly64")
