"""A script that trains nothing. Knows nothing of nnstab."""
import sys

print("arguments:", sys.argv[1:])
