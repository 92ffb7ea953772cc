//! An S3-compatible server for tests: s3s-fs over a temp folder.
