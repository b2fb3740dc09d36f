"""File contents: uploaded inputs and generated output/error files."""
