// Send killswitch heartbeats from a Java (16+) strategy: HTTP over a UNIX socket.
// Usage: java Heartbeat.java [SOCKET] [INTERVAL_MS] [COUNT]
import java.io.IOException;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;

public class Heartbeat {
    static boolean heartbeat(Path socket) throws IOException {
        try (SocketChannel ch = SocketChannel.open(UnixDomainSocketAddress.of(socket))) {
            String request = "POST /heartbeat HTTP/1.1\r\nHost: killswitch\r\n"
                + "Content-Length: 0\r\nConnection: close\r\n\r\n";
            ch.write(ByteBuffer.wrap(request.getBytes(StandardCharsets.US_ASCII)));
            ByteBuffer buf = ByteBuffer.allocate(512);
            ch.read(buf);
            String head = new String(buf.array(), 0, buf.position(), StandardCharsets.US_ASCII);
            return head.startsWith("HTTP/1.1 200");
        }
    }

    public static void main(String[] args) throws Exception {
        Path socket = Path.of(args.length > 0 ? args[0] : "/run/killswitch/control.sock");
        long interval = args.length > 1 ? Long.parseLong(args[1]) : 1000;
        int count = args.length > 2 ? Integer.parseInt(args[2]) : 0;
        for (int sent = 0; count == 0 || sent < count; sent++) {
            System.out.println(heartbeat(socket) ? "ok" : "refused");
            Thread.sleep(interval);
        }
    }
}
