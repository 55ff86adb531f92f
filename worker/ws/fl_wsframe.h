/*
 * fl_wsframe.h - RFC 6455 framing, server side.
 *
 * The reader turns what a client sent into whole messages and control
 * frames; the writers make server frames. No I/O and no libevent here:
 * fl_ws.c feeds the reader what it reads from a socket, the unit tests
 * and the fuzz harness feed it anything.
 *
 * The reader costs nothing while a connection is idle: fl_wsrx_t is a
 * few words, and memory is taken only for a frame that arrived in pieces
 * (its bytes so far) or a message sent in fragments (the fragments so
 * far), and given back as soon as it is whole. A frame that arrives whole
 * in one read is unmasked in place and handed over without a copy.
 *
 * Errors are the close code the connection must be closed with:
 *   1002 protocol error: an unmasked client frame, RSV bits set (no
 *        extension is negotiated), an unknown opcode, a control frame
 *        that is fragmented or longer than 125 bytes, a continuation with
 *        no message started, a new data frame inside a fragmented
 *        message, a 64-bit length with its top bit set, a close frame
 *        with a 1-byte payload or a code that may not be sent (section
 *        7.4: below 1000, 1004-1006, 1015, 1016-2999, 5000 and up);
 *   1007 a text message or a close reason that is not UTF-8;
 *   1009 a message whose declared or accumulated payload is over
 *        max_message (checked on the header, before any payload is
 *        buffered).
 * After an error or a close frame the reader ignores further input.
 */
#ifndef FL_WSFRAME_H
#define FL_WSFRAME_H

#include <stddef.h>
#include <stdint.h>

enum {
    FL_WS_OP_CONT = 0x0,
    FL_WS_OP_TEXT = 0x1,
    FL_WS_OP_BINARY = 0x2,
    FL_WS_OP_CLOSE = 0x8,
    FL_WS_OP_PING = 0x9,
    FL_WS_OP_PONG = 0xA,
};

enum {
    FL_WS_CLOSE_NORMAL = 1000,
    FL_WS_CLOSE_GOING_AWAY = 1001,
    FL_WS_CLOSE_PROTOCOL = 1002,
    FL_WS_CLOSE_UNSUPPORTED = 1003,
    FL_WS_CLOSE_NO_STATUS = 1005, /* reported for a close without a code */
    FL_WS_CLOSE_BAD_DATA = 1007,
    FL_WS_CLOSE_POLICY = 1008,
    FL_WS_CLOSE_TOO_BIG = 1009,
    FL_WS_CLOSE_INTERNAL = 1011,
    FL_WS_CLOSE_TRY_AGAIN = 1013,
};

/* fl_wsrx_feed(): a callback asked to stop */
#define FL_WS_STOPPED 1

/* largest server frame header: 2 + 8 bytes */
#define FL_WS_HEADER_MAX 10

typedef struct {
    unsigned char *part;     /* a frame that did not arrive whole, its
                                bytes so far (header included); or NULL */
    unsigned char *msg;      /* a fragmented message: its payload so
                                far; or NULL */
    uint32_t       part_len; /* bytes in part */
    uint32_t       part_cap;
    uint32_t       msg_len;
    uint32_t       msg_cap;
    uint8_t        msg_op; /* TEXT or BINARY while assembling, else 0 */
    uint8_t        done;   /* close received or error returned */
} fl_wsrx_t;

/*
 * What the reader calls. data is unmasked and writable, valid only during
 * the call. A callback returns 0 to go on, non-zero to stop: the reader
 * then returns FL_WS_STOPPED at once and touches neither rx nor ud again
 * (the callback may have freed the connection that holds them).
 */
typedef struct {
    size_t max_message; /* payload bytes of one message, fragments summed */
    /* a whole text (UTF-8 checked) or binary message */
    int (*on_message)(void *ud, int op, unsigned char *data, size_t len);
    /* a ping or a pong, data at most 125 bytes */
    int (*on_control)(void *ud, int op, unsigned char *data, size_t len);
    /* a close frame: code (FL_WS_CLOSE_NO_STATUS when it had none) and its
     * reason (UTF-8 checked, not NUL-terminated) */
    int (*on_close)(void *ud, int code, const char *reason, size_t len);
} fl_wsrx_ops_t;

/*
 * Feed n bytes the client sent (unmasked in place). Returns 0 when all of
 * them were taken (a partial frame is kept in rx), FL_WS_STOPPED, or a
 * close code (>= 1000) for a protocol error with *why set to a short
 * static English reason, fit for the close frame.
 */
int fl_wsrx_feed(fl_wsrx_t *rx, unsigned char *data, size_t n,
                 const fl_wsrx_ops_t *ops, void *ud, const char **why);

/* Give back rx's buffers; rx is then empty and can be fed again. */
void fl_wsrx_free(fl_wsrx_t *rx);

/* Heap bytes rx holds now (0 when idle). */
size_t fl_wsrx_memory(const fl_wsrx_t *rx);

/* A server frame header (FIN set, unmasked) for a payload of len bytes;
 * returns its length (2, 4 or 10). */
size_t fl_ws_header(unsigned char out[FL_WS_HEADER_MAX], int opcode,
                    uint64_t len);

/* A close frame's payload: the code, then reason cut to fit 123 bytes at a
 * UTF-8 boundary; returns its length. */
size_t fl_ws_close_payload(unsigned char out[125], int code,
                           const char *reason);

/* Sec-WebSocket-Accept for a Sec-WebSocket-Key: base64(SHA-1(key +
 * GUID)). -1 when key (surrounding spaces ignored) is not the base64 of
 * 16 bytes (section 4.2.1), else 0; out is NUL-terminated. */
int fl_ws_accept(const char *key, char out[29]);

#endif
