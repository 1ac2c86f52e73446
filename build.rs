fn main() {
    // The Py_GIL_DISABLED cfg (free-threaded CPython) chooses GilCell's implementation.
    pyo3_build_config::use_pyo3_cfgs();
}
