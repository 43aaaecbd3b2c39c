/* In-kernel protocol detection on the first bytes of a connection's data.
 *
 * l7_detect(b, count, flags) looks at b[0..DETECT_LEN) (the first bytes of one syscall's
 * data, zero-filled past `count`) and returns (proto << 8) | msg_type, or 0.  Only protocols
 * whose FLAG_* bit is in `flags` are tried.  The PROTO_* and FLAG_* macros come from
 * protocol/registry.py (bpf/loader.py passes them as -D options).
 *
 * Rules are strict about the shape of a protocol (a false positive costs a connection's worth
 * of user-space work; a miss costs only a retry on the next syscall, up to DETECT_TRIES
 * times) but never stricter than the servers: what a server answers must be detected, or
 * its answer must not be either (detect_pairable).
 * Adding a protocol: one rule below, in the order of the cheapest, most specific test first.
 */
#ifndef L7_H
#define L7_H

#define DETECT_LEN 32
#define DETECT_TRIES 8

#define RET(p, m) return ((p) << 8) | (m)

static __always_inline u32 be32(const u8 *b) {
    return ((u32)b[0] << 24) | ((u32)b[1] << 16) | ((u32)b[2] << 8) | (u32)b[3];
}
static __always_inline u32 le32(const u8 *b) {
    return ((u32)b[3] << 24) | ((u32)b[2] << 16) | ((u32)b[1] << 8) | (u32)b[0];
}
static __always_inline int is_digit(u8 c) { return c >= '0' && c <= '9'; }
static __always_inline int is_upper(u8 c) { return c >= 'A' && c <= 'Z'; }
/* what the text of an SQL statement may start with: a keyword, a blank, a comment, '(' */
static __always_inline int is_sql_start(u8 c) {
    return is_upper(c) || (c >= 'a' && c <= 'z') || c == ' ' || c == '(' || c == '\n' ||
           c == '-' || c == '/';
}

static __always_inline u32 detect_http(const u8 *b, u32 count) {
    if (count < 8)
        return 0;
    /* responses: "HTTP/1.x NNN" */
    if (b[0] == 'H' && b[1] == 'T' && b[2] == 'T' && b[3] == 'P' && b[4] == '/' &&
        b[5] == '1' && b[6] == '.' && b[8] == ' ' && is_digit(b[9]))
        RET(PROTO_HTTP, MSG_RESPONSE);
    /* requests: METHOD SP, then anything: the servers answer a request whose target is
       malformed (nginx: 400 to "GET abc HTTP/1.1", 414, 505), so it must be seen too (a
       rule stricter than the server would let its answer through without it) */
    u32 sp = 0;
#pragma unroll
    for (int i = 3; i < 9; i++) {
        if (sp == 0 && b[i] == ' ')
            sp = i;
    }
    if (sp == 0)
        return 0;
    if (b[0] == 'G' && b[1] == 'E' && b[2] == 'T' && sp == 3) RET(PROTO_HTTP, MSG_REQUEST);
    if (b[0] == 'P' && b[1] == 'U' && b[2] == 'T' && sp == 3) RET(PROTO_HTTP, MSG_REQUEST);
    if (b[0] == 'P' && b[1] == 'O' && b[2] == 'S' && b[3] == 'T' && sp == 4) RET(PROTO_HTTP, MSG_REQUEST);
    if (b[0] == 'H' && b[1] == 'E' && b[2] == 'A' && b[3] == 'D' && sp == 4) RET(PROTO_HTTP, MSG_REQUEST);
    if (b[0] == 'D' && b[1] == 'E' && b[2] == 'L' && b[3] == 'E' && sp == 6) RET(PROTO_HTTP, MSG_REQUEST);
    if (b[0] == 'P' && b[1] == 'A' && b[2] == 'T' && b[3] == 'C' && sp == 5) RET(PROTO_HTTP, MSG_REQUEST);
    if (b[0] == 'O' && b[1] == 'P' && b[2] == 'T' && b[3] == 'I' && sp == 7) RET(PROTO_HTTP, MSG_REQUEST);
    if (b[0] == 'C' && b[1] == 'O' && b[2] == 'N' && b[3] == 'N' && sp == 7) RET(PROTO_HTTP, MSG_REQUEST);
    if (b[0] == 'T' && b[1] == 'R' && b[2] == 'A' && b[3] == 'C' && sp == 5) RET(PROTO_HTTP, MSG_REQUEST);
    return 0;
}

/* The API of an HTTP request (l7_rpc_api's key, protocol/http/stitch.py api_name()): the
 * request line up to the end of the path (a '?', a blank or a line end after the method),
 * at most HTTP_API_LEN bytes (include/l7_events.h).  Returned as its 64-bit FNV-1a hash (protocol/http/stitch.py
 * api_hash() computes the same from the name; tests/test_kernel_counts.py holds them
 * equal), 0 never.  b[0..HTTP_API_LEN] must be readable; n: the bytes there. */
/* 1 if x == 0, else 0, for x < 2^63, without a branch */
#define IS_ZERO(x) (((u64)(x) - 1) >> 63)

static __always_inline u64 http_api_hash(const u8 *b, u32 n) {
    /* a bounded loop (kernel >= 5.3), branch-free inside but for its exit once the API
       ended (most APIs are far shorter than HTTP_API_LEN: "GET /" ends at 5): the
       verifier follows one path with a short way out of each iteration */
    u64 h = 14695981039346656037ULL;
    u64 sp = 0, ended = 0;
#pragma nounroll
    for (int i = 0; i < HTTP_API_LEN; i++) {
        u64 ch = b[i];
        u64 blank = IS_ZERO(ch ^ ' ');
        ended |= IS_ZERO(ch ^ '\r') | IS_ZERO(ch ^ '\n') |
                 (sp & (blank | IS_ZERO(ch ^ '?'))) | (((u64)n - i - 1) >> 63);
        if (ended)
            break;
        h = (h ^ ch) * 1099511628211ULL;
        sp |= blank;
    }
    return h ? h : 1;
}

/* HTTP/2 without the client preface (protocol/http2/README.md): the server's first
 * SETTINGS (servers that write before reading, as Go's and gRPC's do), or a HEADERS frame
 * on a client stream, whole in the syscall, optionally after a SETTINGS ack (a connection
 * seen from its middle), whose first HPACK field is a static :method/:path/:scheme/
 * :authority (request) or :status (response), indexed, as a literal's name, or a literal
 * ":method" / ":status" name. */
static __always_inline u32 h2_first_field(u8 c) {
    u8 i = c & 0x80 ? c & 0x7f : c & 0x40 ? c & 0x3f : c & 0x0f;
    if ((c & 0xc0) == 0 && (c & 0xe0) != 0 && (c & 0xf0) != 0x10)
        return 0;                                   /* a table size update, or not HPACK */
    if (i >= 1 && i <= 7) return MSG_REQUEST;
    if (i >= 8 && i <= 14) return MSG_RESPONSE;
    return 0;
}

static __always_inline u32 detect_http2_frames(const u8 *b, u32 count) {
    if (count < 10 || b[0] != 0 || b[5] & 0x80)
        return 0;
    u32 len = ((u32)b[1] << 8) | b[2];
    u32 o = 0;
    if (b[3] == 4 && b[4] == 1 && len == 0 && !b[5] && !b[6] && !b[7] && !b[8]) {
        o = 9;                                      /* a SETTINGS ack first */
        if (count < 19 || b[9] != 0 || b[14] & 0x80)
            return 0;
        len = ((u32)b[10] << 8) | b[11];
    }
    if (b[o + 3] != 1 || (b[o + 4] & ~0x25) || !(b[o + 8] & 1) || len == 0 || len > 16384 ||
        o + 9 + len > count)
        return 0;
    u32 p = o + (b[o + 4] & 0x20 ? 14 : 9);
    u32 m = h2_first_field(b[p]);
    if (m)
        RET(PROTO_HTTP2, m);
    /* a literal with a new name (no index): ":status" or ":method", not Huffman-coded */
    if ((b[p] == 0x40 || b[p] == 0 || b[p] == 0x10) && b[p + 1] == 7 && b[p + 2] == ':') {
        if (b[p + 3] == 's' && b[p + 4] == 't' && b[p + 8] == 's')
            RET(PROTO_HTTP2, MSG_RESPONSE);
        if (b[p + 3] == 'm' && b[p + 4] == 'e' && b[p + 8] == 'd')
            RET(PROTO_HTTP2, MSG_REQUEST);
    }
    return 0;
}

static __always_inline u32 detect_http2(const u8 *b, u32 count) {
    /* client connection preface "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" */
    if (count >= 16 && b[0] == 'P' && b[1] == 'R' && b[2] == 'I' && b[3] == ' ' &&
        b[4] == '*' && b[11] == '2' && b[12] == '.' && b[13] == '0')
        RET(PROTO_HTTP2, MSG_REQUEST);
    return detect_http2_frames(b, count);
}

static __always_inline int is_letter(u8 c) { return is_upper(c) || (c >= 'a' && c <= 'z'); }

static __always_inline u32 detect_redis(const u8 *b, u32 count) {
    /* an inline command without arguments, "PING\r\n" (redis-benchmark's PING_INLINE,
       telnet users): 4 to 8 letters then CRLF.  (With arguments an inline line could be
       any text protocol's, HTTP's "GET /" among them: not taken.) */
    if (count >= 6 && is_letter(b[0]) && is_letter(b[1]) && is_letter(b[2]) &&
        is_letter(b[3])) {
        u32 e = 0;
#pragma unroll
        for (int i = 4; i < 10; i++) {
            if (e == 0 && !is_letter(b[i]))
                e = i;
        }
        if (e >= 4 && e <= 8 && b[e] == '\r' && b[e + 1] == '\n')
            RET(PROTO_REDIS, MSG_REQUEST);
    }
    /* a command: "*<n>\r\n$<len>\r\n" */
    if (count < 8 || b[0] != '*' || !is_digit(b[1]))
        return 0;
    if (b[2] == '\r' && b[3] == '\n' && b[4] == '$' && is_digit(b[5]))
        RET(PROTO_REDIS, MSG_REQUEST);
    if (is_digit(b[2]) && b[3] == '\r' && b[4] == '\n' && b[5] == '$' && is_digit(b[6]))
        RET(PROTO_REDIS, MSG_REQUEST);
    return 0;
}

static __always_inline u32 detect_pgsql(const u8 *b, u32 count) {
    if (count < 8)
        return 0;
    u32 len = be32(b);
    u32 code = be32(b + 4);
    /* StartupMessage (protocol 3.0), SSLRequest, GSSENCRequest */
    if (len == count && len >= 8 && len < 10000 &&
        (code == 0x00030000 || code == 80877103 || code == 80877104))
        RET(PROTO_PGSQL, MSG_REQUEST);
    /* Query / Parse / Bind with a plausible length */
    if (b[0] == 'Q' || b[0] == 'P' || b[0] == 'B') {
        u32 l = be32(b + 1);
        if (b[1] == 0 && l >= 4 && l + 1 <= count) {
            if (b[0] != 'Q' || is_sql_start(b[5]))
                RET(PROTO_PGSQL, MSG_REQUEST);
        }
    }
    return 0;
}

static __always_inline u32 detect_mysql(const u8 *b, u32 count) {
    if (count < 5)
        return 0;
    u32 len = le32(b) & 0xffffff;
    u8 seq = b[3];
    if (seq != 0 || len == 0 || len + 4 > count)
        return 0;
    /* server greeting: protocol version 10 then a NUL-terminated version string */
    if (b[4] == 0x0a && len > 40 && is_digit(b[5]))
        RET(PROTO_MYSQL, MSG_RESPONSE);
    /* a command packet: whole packet in this syscall */
    u8 com = b[4];
    if (len + 4 != count)
        return 0;
    if (com == 0x03 || com == 0x16) {    /* COM_QUERY, COM_STMT_PREPARE: text follows */
        if (len > 1 && is_sql_start(b[5]))
            RET(PROTO_MYSQL, MSG_REQUEST);
        return 0;
    }
    if (com == 0x17 && len >= 10)       /* COM_STMT_EXECUTE */
        RET(PROTO_MYSQL, MSG_REQUEST);
    if ((com == 0x0e || com == 0x01) && len == 1)   /* COM_PING, COM_QUIT */
        RET(PROTO_MYSQL, MSG_REQUEST);
    if (com == 0x02 && len > 1)         /* COM_INIT_DB */
        RET(PROTO_MYSQL, MSG_REQUEST);
    return 0;
}

static __always_inline u32 detect_mongo(const u8 *b, u32 count) {
    if (count < 16)
        return 0;
    u32 len = le32(b);
    u32 op = le32(b + 12);
    if (len != count || (s32)le32(b + 4) < 0)
        return 0;
    if (!(op == 2013 || op == 2012 || op == 2004 || op == 1 || (op >= 2001 && op <= 2007) ||
          op == 2010 || op == 2011))
        return 0;
    /* the opcode tells legacy requests and replies apart (an OP_QUERY may carry responseTo
       -1); OP_MSG and OP_COMPRESSED go both ways: a request answers nothing */
    if (op == 1 || op == 2011)
        RET(PROTO_MONGO, MSG_RESPONSE);
    if ((op != 2013 && op != 2012) || le32(b + 8) == 0)
        RET(PROTO_MONGO, MSG_REQUEST);
    RET(PROTO_MONGO, MSG_RESPONSE);
}

static __always_inline u32 detect_kafka(const u8 *b, u32 count) {
    /* request: int32 size, int16 api_key, int16 api_version, int32 correlation_id,
       int16 client_id length */
    if (count < 14)
        return 0;
    u32 size = be32(b);
    if (size + 4 != count)
        return 0;
    u32 key = ((u32)b[4] << 8) | b[5];
    u32 ver = ((u32)b[6] << 8) | b[7];
    if (key > 74 || ver > 20 || (b[8] & 0x80))
        return 0;
    s32 cid_len = (s16)(((u16)b[12] << 8) | b[13]);
    if (cid_len < -1 || cid_len > 255 || (u32)(14 + (cid_len > 0 ? cid_len : 0)) > count)
        return 0;
    RET(PROTO_KAFKA, MSG_REQUEST);
}

static __always_inline u32 detect_rocketmq(const u8 *b, u32 count) {
    /* int32 length, int32 (serialize type << 24 | header length), JSON header */
    if (count < 16)
        return 0;
    u32 len = be32(b);
    if (len + 4 != count || b[4] != 0 || b[8] != '{' || b[9] != '"')
        return 0;
    if (b[10] == 'c' && b[11] == 'o' && b[12] == 'd' && b[13] == 'e')
        RET(PROTO_ROCKETMQ, MSG_UNKNOWN);
    return 0;
}

/* A DNS message (the whole datagram over UDP): id, flags with opcode 0-2 or 4-5 and the Z
 * bit clear, exactly one question; a query has no answer or authority records and rcode 0. */
static __always_inline u32 detect_dns_msg(const u8 *b, u32 count) {
    if (count < 17 || count > 65535)
        return 0;
    u8 f1 = b[2], f2 = b[3];
    u8 opcode = (f1 >> 3) & 0xf;
    if (opcode > 5 || opcode == 3 || (f2 & 0x40) || b[4] != 0 || b[5] != 1)
        return 0;
    if (f1 & 0x80)
        RET(PROTO_DNS, MSG_RESPONSE);
    if (b[6] || b[7] || b[8] || b[9] || (f2 & 0x0f))
        return 0;
    RET(PROTO_DNS, MSG_REQUEST);
}

static __always_inline u32 detect_dns(const u8 *b, u32 count) {
    /* DNS over TCP: uint16 length within this syscall's bytes (or this syscall's joined
       with the short read before it: a client may send several queries in one write),
       then a message */
    if (count < 19)
        return 0;
    u32 len = ((u32)b[0] << 8) | b[1];
    if (len + 2 > count)
        return 0;
    return detect_dns_msg(b + 2, len);
}

/* CONN_F_MISSED_EGRESS / _INGRESS (l7_events.h): data of this direction failed detection.
 * A response detected on the other direction afterwards would answer a request that was
 * never sent to user space (resp_count > req_count): the connection is not started on it,
 * but on the next request that passes. */

static __always_inline u8 detect_missed_flag(u8 egress) {
    return egress ? CONN_F_MISSED_EGRESS : CONN_F_MISSED_INGRESS;
}

/* May a detection result `r` on direction `egress` start the connection? */
static __always_inline int detect_pairable(u32 r, u8 egress, u8 conn_flags) {
    if ((r & 0xff) != MSG_RESPONSE)
        return 1;
    return !(conn_flags & detect_missed_flag(!egress));
}

static __always_inline u32 l7_detect(const u8 *b, u32 count, u32 flags) {
    u32 r;
    if (flags & FLAG_HTTP) { r = detect_http(b, count); if (r) return r; }
    if (flags & FLAG_HTTP2) { r = detect_http2(b, count); if (r) return r; }
    if (flags & FLAG_REDIS) { r = detect_redis(b, count); if (r) return r; }
    if (flags & FLAG_PGSQL) { r = detect_pgsql(b, count); if (r) return r; }
    if (flags & FLAG_MONGO) { r = detect_mongo(b, count); if (r) return r; }
    if (flags & FLAG_ROCKETMQ) { r = detect_rocketmq(b, count); if (r) return r; }
    if (flags & FLAG_KAFKA) { r = detect_kafka(b, count); if (r) return r; }
    if (flags & FLAG_MYSQL) { r = detect_mysql(b, count); if (r) return r; }
    if (flags & FLAG_DNS) { r = detect_dns(b, count); if (r) return r; }
    return 0;
}

#endif
