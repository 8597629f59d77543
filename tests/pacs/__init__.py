"""Tests against a real Orthanc PACS over DICOMweb (see conftest.py)."""
