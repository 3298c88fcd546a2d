"""Training and fine-tuning, run through `polypseg train ...` (not a top-level `training`
package: sam2 installs one of its own)."""
