//! Opaque TCP relay: byte-exact, half-close preserved, bounded buffers.

use tokio::net::TcpStream;

use crate::metrics::ConnMetrics;

/// Per-direction buffer. Bounded: a slow reader stops us reading from the writer
/// (backpressure through TCP windows), never an unbounded queue in the agent.
const BUF: usize = 64 * 1024;

/// Copies both ways until both sides are done. When one side ends its stream
/// (FIN), the other side's write half is shut down, and the reverse direction keeps
/// flowing: half-close reaches the peer as it would without the agent.
pub async fn relay(
    mut client: TcpStream,
    mut upstream: TcpStream,
    m: &ConnMetrics,
) -> std::io::Result<()> {
    let _ = client.set_nodelay(true);
    let (from_client, from_server) =
        tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUF, BUF).await?;
    m.bytes_from_client.inc_by(from_client);
    m.bytes_from_server.inc_by(from_server);
    Ok(())
}
