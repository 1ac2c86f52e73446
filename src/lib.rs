use pyo3::prelude::*;
#[pymodule]
fn _ferroloop(_m: &Bound<'_, PyModule>) -> PyResult<()> { Ok(()) }
