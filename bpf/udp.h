/* UDP datagrams (DNS over UDP), spliced into probe.c by bpf/loader.py.
 *
 * A UDP socket becomes a connection at its first datagram syscall when DNS is enabled
 * (gala-gopher's is_tracing_udp): sendto/recvfrom/sendmsg/recvmsg with an address, sendmmsg/
 * recvmmsg (glibc sends its A and AAAA queries together with sendmmsg), or any data syscall
 * on a socket connected with connect() (send/recv/read/write).  sock:sock_*_length tells UDP
 * from TCP.  l4_role is L4_UDP ("udp"); the peer of each datagram (from its sockaddr, or the
 * connect() address) goes to user space in a pseudo header before the datagram's bytes
 * (UDP_HDR bytes: u16 family, u16 port, u8 addr[16], host order), so that user space pairs
 * and reports per peer as upstream keys UDP links (server = the remote address, client
 * no_ip).  Detection: include/l7.h's detect_dns_msg on the datagram.
 */
#define MAX_MMSG 2        /* datagrams of one sendmmsg/recvmmsg looked at (glibc: A + AAAA) */
#define UDP_HDR 20
/* scratch offsets beyond CAP_MAX in the per-CPU buffer (0-63: sockaddr / open record,
   64-255: a new conn_val) */
#define UDP_SCRATCH_MSG 256
#define UDP_SCRATCH_IOV 320

struct mmsghdr_ {
    struct user_msghdr msg_hdr;
    unsigned int msg_len;
    unsigned int pad;
};

#if SOCK_HOOKS
/* offsetof(struct sock_common, skc_v6_daddr) on x86-64 with network namespaces (every
 * distribution kernel): after the address and port pairs, family, state, bound device, the
 * bind node, skc_prot and skc_net.  Not from <net/sock.h>: that header alone adds ~3 s to
 * every compile of this program. */
#define SKC_V6_DADDR 56
/* A connected socket's peer, from the start of its struct sock_common (skc_daddr at 0,
 * skc_dport at 12, skc_family at 16: unchanged for many kernel versions), or nothing (zeros:
 * user space places the datagram by its DNS id, see pipeline/udp.py). */
static __always_inline void udp_sk_peer(u8 *h, u64 sk) {
    u8 sc[18] = {};
    if (!sk || bpf_probe_read_kernel(sc, sizeof(sc), (void *)sk) != 0)
        return;
    u16 family = sc[16] | (sc[17] << 8);
    if (family == AF_INET_) {
        if (!(sc[0] | sc[1] | sc[2] | sc[3]))
            return;
        __builtin_memcpy(h + 4, sc, 4);
    } else if (family == AF_INET6_) {
        if (bpf_probe_read_kernel(h + 4, 16, (void *)(sk + SKC_V6_DADDR)) != 0)
            return;
    } else {
        return;
    }
    h[0] = sc[16];
    h[1] = sc[17];
    h[2] = sc[13];                  /* port: network -> host order */
    h[3] = sc[12];
}
#endif

/* The pseudo header at ev->data: the peer from a sockaddr, or the connection's address
 * (sock hooks: the socket's, see udp_sk_peer). */
static __always_inline void udp_peer(struct data_evt_buf *ev, struct conn_val *c, u64 name,
                                     u64 sk) {
    u8 *h = ev->data;
    __builtin_memset(h, 0, UDP_HDR);
    if (name) {
        u8 *sa = ev->data + CAP_MAX;            /* scratch */
        if (bpf_probe_read_user(sa, 24, (void *)name) == 0) {
            u16 family = sa[0] | (sa[1] << 8);
            h[0] = sa[0];
            h[1] = sa[1];
            h[2] = sa[3];                       /* port: network -> host order */
            h[3] = sa[2];
            if (family == AF_INET_)
                __builtin_memcpy(h + 4, sa + 4, 4);
            else if (family == AF_INET6_)
                __builtin_memcpy(h + 4, sa + 8, 16);
            return;
        }
    }
#if SOCK_HOOKS
    udp_sk_peer(h, sk);
    return;
#endif
    h[0] = c->family & 0xff;
    h[1] = c->family >> 8;
    h[2] = c->server_port & 0xff;
    h[3] = c->server_port >> 8;
    __builtin_memcpy(h + 4, c->server_ip, 16);
}

/* One datagram of `len` bytes in buffer `buf` (an iovec array if iovcnt: its first element,
 * where resolvers put the whole message). */
static __always_inline void udp_one(void *ctx, struct data_evt_buf *ev, struct conn_key *k,
                                    u64 buf, u32 iovcnt, u64 name, u32 len, u8 dir,
                                    struct probe_config *cfg, u64 sk) {
    if (len == 0)
        return;
    struct conn_val *c = conns.lookup(k);
    if (!c) {
        struct conn_val *n = (struct conn_val *)(ev->data + CAP_MAX + 64);     /* scratch */
        __builtin_memset(n, 0, sizeof(*n));
        n->conn_id = new_conn_id();
        n->l4_role = L4_UDP;
        n->sk = sk;
        if (conns.update(k, n) != 0) {
            stat_add(STAT_CONNS_DROPPED, 1);
            return;
        }
        c = conns.lookup(k);
        if (!c)
            return;
    }
    if (c->flags & CONN_F_IGNORED)
        return;
    if (c->proto == PROTO_UNKNOWN)
        c->l4_role = L4_UDP;        /* a connect()ed UDP socket was entered as L4_CLIENT */
    count_io(c, dir, len);
    u64 src = buf;
    u32 avail = len;
    if (iovcnt) {
        struct iovec *iov = (struct iovec *)(ev->data + CAP_MAX + UDP_SCRATCH_IOV);
        if (bpf_probe_read_user(iov, sizeof(*iov), (void *)buf) != 0)
            return;
        src = (u64)iov->iov_base;
        avail = iov->iov_len < len ? iov->iov_len : len;
    }
    u32 cap = cfg->cap_bytes;
    if (cap > CAP_MAX - UDP_HDR)
        cap = CAP_MAX - UDP_HDR;
    u32 n = avail < cap ? avail : cap;
    if (c->proto == PROTO_UNKNOWN && n < DETECT_LEN)
        n = avail < DETECT_LEN ? avail : DETECT_LEN;
    asm volatile("" : "+r"(n));
    n &= (CAP_MAX - 1);
    if (n > CAP_MAX - UDP_HDR)
        n = CAP_MAX - UDP_HDR;
    if (n == 0 || bpf_probe_read_user(ev->data + UDP_HDR, n, (void *)src) != 0)
        return;
    udp_peer(ev, c, name, sk);
    if (c->proto == PROTO_UNKNOWN) {
        u32 r = n >= 12 ? detect_dns_msg(ev->data + UDP_HDR, len) : 0;
        if (r == 0) {
            c->tries += 1;
            if (c->tries >= DETECT_TRIES)
                c->flags |= CONN_F_IGNORED;
            return;
        }
        u8 msg = r & 0xff;
        c->proto = r >> 8;
        c->l7_role = ((dir == DIR_EGRESS) ^ (msg == MSG_RESPONSE)) ? L7_CLIENT : L7_SERVER;
        u8 *h = ev->data;
        c->family = h[0] | (h[1] << 8);
        c->server_port = h[2] | (h[3] << 8);
        __builtin_memcpy(c->server_ip, h + 4, 16);
        struct evt_open *o = (struct evt_open *)(ev->data + CAP_MAX);      /* scratch */
        __builtin_memset(o, 0, sizeof(*o));
        o->type = EVT_OPEN;
        o->tgid = k->tgid;
        o->conn_id = c->conn_id;
        o->ts = bpf_ktime_get_ns();
        o->fd = k->fd;
        o->family = c->family;
        o->server_port = c->server_port;
        o->l4_role = L4_UDP;
        o->l7_role = c->l7_role;
        o->proto = c->proto;
        __builtin_memcpy(o->server_ip, c->server_ip, 16);
        if (output(ctx, o, sizeof(*o), 0) != 0) {
            stat_add(STAT_RECORDS_DROPPED, 1);
            c->proto = PROTO_UNKNOWN;
            return;
        }
    }
    if (!cfg->emit_data)
        return;
    ev->hdr.type = EVT_DATA;
    ev->hdr.tgid = k->tgid;
    ev->hdr.conn_id = c->conn_id;
    ev->hdr.ts = bpf_ktime_get_ns();
    ev->hdr.true_len = len + UDP_HDR;
    ev->hdr.cap_len = n + UDP_HDR;
    ev->hdr.lost = 0;
    ev->hdr.lost_msgs = 0;
    ev->hdr.flags = 0;
    ev->hdr.direction = dir;
    ev->hdr.source = SRC_SYSCALL;
    ev->hdr.proto = c->proto;
    ev->hdr.l7_role = c->l7_role;
    u32 size = sizeof(struct evt_data) + UDP_HDR + n;
    if (output(ctx, ev, size, 0) != 0) {
        stat_add(STAT_RECORDS_DROPPED, 1);
        stat_add(STAT_BYTES_DROPPED, len);
    }
}

/* The datagrams of one syscall: one, or the first MAX_MMSG of a sendmmsg/recvmmsg (one
 * loop, not unrolled: udp_one is inlined once, the stack is short). */
static __always_inline void exit_udp(void *ctx, struct active_op *op, long ret,
                                     struct conn_key *k) {
    struct probe_config *cfg = get_config();
    if (!cfg || !(cfg->proto_flags & FLAG_DNS) || ret <= 0)
        return;
    int cpu = bpf_get_smp_processor_id();
    struct data_evt_buf *ev = scratch.lookup(&cpu);
    if (!ev)
        return;
    u64 msgs = op->msgs;
    u32 cnt = msgs ? (ret < MAX_MMSG ? (u32)ret : MAX_MMSG) : 1;
    struct mmsghdr_ *m = (struct mmsghdr_ *)(ev->data + CAP_MAX + UDP_SCRATCH_MSG);
#pragma nounroll
    for (u32 i = 0; i < MAX_MMSG; i++) {
        if (i >= cnt)
            break;
        u64 buf = op->buf, name = op->name;
        u32 iovcnt = op->iovcnt, len = ret;
        if (msgs) {
            if (bpf_probe_read_user(m, sizeof(*m), (void *)(msgs + i * sizeof(*m))) != 0)
                break;
            buf = (u64)m->msg_hdr.msg_iov;
            iovcnt = m->msg_hdr.msg_iovlen;
            name = (u64)m->msg_hdr.msg_name;
            len = m->msg_len;
        }
        udp_one(ctx, ev, k, buf, iovcnt, name, len, op->dir, cfg, op->sk);
    }
}

/* Tail-called from exit_data for a UDP socket (bpf/loader.py loads it with the syscall
 * programs' type); the syscall's op is still in map `active`. */
int udp_exit_tail(void *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    struct active_op *op = active.lookup(&id);
    if (!op)
        return 0;
    struct conn_key k = {.tgid = id >> 32, .fd = op->fd};
    exit_udp(ctx, op, op->ret, &k);
    active.delete(&id);
    return 0;
}
