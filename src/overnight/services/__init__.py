"""Use cases of the Files and Batches APIs. They see domain types and interfaces, never a web framework."""
