//! Test fixture, not shipped: a Rust transform that reaches for the machine
//! it runs on through WASI 0.2 (files, environment, clocks, random,
//! sockets) and reports what it found as the args of one call
//! (`fixture.report`), so host tests can assert the documented sandbox:
//!
//! `{"file": "error: ...", "preopens": 0, "env": [], "wall_clock": [0, 0],
//!   "monotonic_clock": 0, "random": [16 bytes], "socket": "error: ..."}`
//!
//! Nothing is granted except random (fresh instances would otherwise draw
//! the same numbers); the clocks are stopped at the Unix epoch.

use passerelle_guest::{Action, Failure, Message, call, transform};
use serde_json::{Value, json};
use wasip2::sockets::network::{IpAddressFamily, IpSocketAddress, Ipv4SocketAddress};

fn report(_msg: Message) -> Result<Vec<Action>, Failure> {
    let now = wasip2::clocks::wall_clock::now();
    let args = json!({
        "file": read_file(),
        "preopens": wasip2::filesystem::preopens::get_directories().len(),
        "env": wasip2::cli::environment::get_environment(),
        "wall_clock": [now.seconds, now.nanoseconds],
        "monotonic_clock": wasip2::clocks::monotonic_clock::now(),
        "random": wasip2::random::random::get_random_bytes(16),
        "socket": connect(),
    });
    Ok(vec![call("fixture", "report", &args)?])
}

/// Through std, which looks for the file under the preopened directories.
fn read_file() -> Value {
    match std::fs::read("/etc/passwd") {
        Ok(bytes) => json!(format!("read {} bytes", bytes.len())),
        Err(error) => json!(format!("error: {error}")),
    }
}

/// A TCP connection to the broker's port on the host's loopback.
fn connect() -> Value {
    let socket = match wasip2::sockets::tcp_create_socket::create_tcp_socket(IpAddressFamily::Ipv4) {
        Ok(socket) => socket,
        Err(error) => return json!(format!("error: create: {error:?}")),
    };
    let network = wasip2::sockets::instance_network::instance_network();
    let broker = IpSocketAddress::Ipv4(Ipv4SocketAddress {
        port: 5672,
        address: (127, 0, 0, 1),
    });
    if let Err(error) = socket.start_connect(&network, broker) {
        return json!(format!("error: connect: {error:?}"));
    }
    socket.subscribe().block();
    match socket.finish_connect() {
        Ok(_) => json!("connected"),
        Err(error) => json!(format!("error: connect: {error:?}")),
    }
}

transform!(report);
