//! `ferroloop._ferroloop`: the Rust core of the ferroloop event loop.

mod call_args;
mod clock;
mod errors;
mod event_loop;
mod fastcall;
mod gil_cell;
mod handle;
mod poller;
mod sock;
mod timers;
mod transport;

use pyo3::prelude::*;

#[pymodule]
fn _ferroloop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<event_loop::LoopCore>()?;
    fastcall::install(m.py())?;
    m.add_class::<handle::Handle>()?;
    m.add_class::<handle::TimerHandle>()?;
    m.add_class::<transport::stream::StreamCore>()?;
    m.add_class::<transport::datagram::DatagramCore>()?;
    m.add_class::<transport::pipe::PipeCore>()?;
    m.add_class::<transport::accept::Acceptor>()?;
    m.add_function(wrap_pyfunction!(
        transport::setup::_init_socket_transport,
        m
    )?)?;
    m.add_function(wrap_pyfunction!(
        transport::methods::_install_stream_transport_methods,
        m
    )?)?;
    m.add_function(wrap_pyfunction!(sock::_sock_recv_now, m)?)?;
    m.add_function(wrap_pyfunction!(sock::_sock_send_now, m)?)?;
    m.add_function(wrap_pyfunction!(sock::_sock_connect_now, m)?)?;
    m.add_function(wrap_pyfunction!(sock::_sock_recv_into_now, m)?)?;
    m.add_function(wrap_pyfunction!(sock::_sock_recvfrom_now, m)?)?;
    m.add_function(wrap_pyfunction!(sock::_sock_recvfrom_into_now, m)?)?;
    m.add_function(wrap_pyfunction!(sock::_sock_sendto_now, m)?)?;
    Ok(())
}
