"""Helpers of the whole package that depend on no other part of it: the CPU's bfloat16 probe,
flushing subnormal numbers, and the permissions of written files."""
