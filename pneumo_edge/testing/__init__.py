"""Harnesses for tests and benchmarks: a local test PACS, films written as DICOM."""
