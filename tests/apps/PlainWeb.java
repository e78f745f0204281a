// Plain web tier for the context-propagation tests (Java): no tracing library,
// and it forwards no header at all.
//
//     javac -d OUT PlainWeb.java
//     java -cp OUT PlainWeb --listen 0.0.0.0:8080 --backend http://10.1.2.3:8080
//
// com.sun.net.httpserver.HttpServer with a fixed pool of 16 threads as its
// executor (the pool thread that runs an exchange reads its request); the
// backend is called with java.net.HttpURLConnection, which writes on the
// calling (pool) thread. GET /work/<tag>?calls=N&delay_ms=D (N default 1)
// waits D ms, calls <backend>/echo/<tag>/<i> for i in 0..N one after another
// and answers JSON like plain_web.py:
//
//     {"app": "plain_web_java", "tag": "<tag>", "thread": "<pool thread>",
//      "headers": [[name, value], ...],
//      "calls": [{"path": "/echo/<tag>/0", "status": 200, "in_flight": 3, "body": <backend JSON>, "error": null}]}
//
// in_flight is how many requests the app was serving when it made the call.

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.HttpURLConnection;
import java.net.InetSocketAddress;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Executors;

public class PlainWeb {
    static String backend = "";
    static final java.util.concurrent.atomic.AtomicInteger inFlight =
            new java.util.concurrent.atomic.AtomicInteger();

    public static void main(String[] args) throws Exception {
        String listen = "0.0.0.0:8080";
        for (int i = 0; i + 1 < args.length; i += 2) {
            if (args[i].equals("--listen")) {
                listen = args[i + 1];
            } else if (args[i].equals("--backend")) {
                backend = args[i + 1].replaceAll("/+$", "");
            } else {
                throw new IllegalArgumentException("unknown flag " + args[i]);
            }
        }
        int colon = listen.lastIndexOf(':');
        String host = listen.substring(0, colon).replace("[", "").replace("]", "");
        int port = Integer.parseInt(listen.substring(colon + 1));
        HttpServer server = HttpServer.create(new InetSocketAddress(host, port), 1024);
        server.setExecutor(Executors.newFixedThreadPool(16));
        server.createContext("/", PlainWeb::handle);
        server.start();
        System.err.println("PlainWeb: listening on " + listen);
    }

    static void handle(HttpExchange ex) throws IOException {
        inFlight.incrementAndGet();
        try {
            work(ex);
        } finally {
            inFlight.decrementAndGet();
        }
    }

    static void work(HttpExchange ex) throws IOException {
        try {
            String path = ex.getRequestURI().getPath();
            String[] parts = path.split("/");
            if (parts.length != 3 || !parts[1].equals("work") || parts[2].isEmpty()) {
                reply(ex, 404, "{\"app\": \"plain_web_java\", \"error\": \"not found\"}");
                return;
            }
            String tag = parts[2];
            int calls = 1;
            long delayMs = 0;
            String query = ex.getRequestURI().getRawQuery();
            if (query != null) {
                for (String kv : query.split("&")) {
                    String[] p = kv.split("=", 2);
                    if (p.length == 2 && p[0].equals("calls")) calls = Integer.parseInt(p[1]);
                    if (p.length == 2 && p[0].equals("delay_ms")) delayMs = Long.parseLong(p[1]);
                }
            }
            if (delayMs > 0) Thread.sleep(delayMs);
            StringBuilder out = new StringBuilder();
            boolean ok = true;
            for (int i = 0; i < calls; i++) {
                String callPath = "/echo/" + tag + "/" + i;
                int status = 0;
                String body = "null";
                String error = "null";
                int at = inFlight.get();
                try {
                    HttpURLConnection c = (HttpURLConnection) new URL(backend + callPath).openConnection();
                    c.setConnectTimeout(20000);
                    c.setReadTimeout(20000);
                    status = c.getResponseCode();
                    InputStream in = status >= 400 ? c.getErrorStream() : c.getInputStream();
                    String text = in == null ? "" : new String(readAll(in), StandardCharsets.UTF_8);
                    body = text.trim().startsWith("{") ? text : quote(text);
                } catch (Exception e) {
                    error = quote(e.toString());
                }
                ok &= status == 200;
                if (i > 0) out.append(", ");
                out.append("{\"path\": ").append(quote(callPath))
                        .append(", \"status\": ").append(status)
                        .append(", \"in_flight\": ").append(at)
                        .append(", \"body\": ").append(body)
                        .append(", \"error\": ").append(error).append('}');
            }
            StringBuilder headers = new StringBuilder();
            for (Map.Entry<String, List<String>> h : ex.getRequestHeaders().entrySet()) {
                for (String v : h.getValue()) {
                    if (headers.length() > 0) headers.append(", ");
                    headers.append('[').append(quote(h.getKey())).append(", ").append(quote(v)).append(']');
                }
            }
            reply(ex, ok ? 200 : 502, "{\"app\": \"plain_web_java\", \"tag\": " + quote(tag)
                    + ", \"thread\": " + quote(Thread.currentThread().getName())
                    + ", \"headers\": [" + headers + "], \"calls\": [" + out + "]}");
        } catch (Exception e) {
            reply(ex, 500, "{\"app\": \"plain_web_java\", \"error\": " + quote(e.toString()) + "}");
        }
    }

    static byte[] readAll(InputStream in) throws IOException {
        ByteArrayOutputStream buf = new ByteArrayOutputStream();
        byte[] chunk = new byte[8192];
        int n;
        while ((n = in.read(chunk)) > 0) buf.write(chunk, 0, n);
        in.close();
        return buf.toByteArray();
    }

    static void reply(HttpExchange ex, int status, String json) throws IOException {
        byte[] data = json.getBytes(StandardCharsets.UTF_8);
        ex.getResponseHeaders().set("Content-Type", "application/json");
        ex.sendResponseHeaders(status, data.length);
        try (OutputStream os = ex.getResponseBody()) {
            os.write(data);
        }
    }

    static String quote(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char ch : s.toCharArray()) {
            if (ch == '"' || ch == '\\') b.append('\\').append(ch);
            else if (ch < 0x20) b.append(String.format("\\u%04x", (int) ch));
            else b.append(ch);
        }
        return b.append('"').toString();
    }
}
