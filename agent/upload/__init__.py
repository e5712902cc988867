"""Lesson recordings to S3-compatible object storage: resumable, verified, never at the live
stream's expense (docs/upload.md)."""
