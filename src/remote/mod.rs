//! The engines a fleet of replicas shares, as connections: object storage ([`objects`]:
//! S3, GCS, Azure or a shared directory, through the `object_store` crate) and PostgreSQL
//! ([`pg`]: a pool, the catalog schema, LISTEN). Knows nothing of models or datasets: the
//! stores above (`store::object`, `dataset::remote`) put their rows and objects through it.

pub mod objects;
pub mod pg;

pub use objects::{ObjectError, Objects};
