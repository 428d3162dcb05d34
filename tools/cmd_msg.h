/* What `pier msg` (cmd_msg.c) and `pier msg-client` (cmd_msg_client.c) share: the tool's
 * message service, which is id 1001 for JSON and id 1002 for a plain echo, and a flag
 * parser for seconds. */
#ifndef PIER_TOOLS_CMD_MSG_H
#define PIER_TOOLS_CMD_MSG_H

#include "cli.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

#define PIER_MSG_DEFAULT_PORT 10089

#define MSG_ID_JSON 1001
#define MSG_ID_ECHO 1002 /* body back as is: the framework's cost without JSON */
#define REPLY_PREFIX "server has received msg, "

/* Seconds, fractions allowed ("0.5"), to milliseconds; must be > 0. Prints one line and
 * returns -1 for a bad value. */
static inline int msg_parse_secs(const char *cmd, const char *flag, const char *s, uint64_t *ms) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !*s || !(v > 0) || v > 86400) {
        pier_cli_usage_error(cmd, "--%s wants seconds above 0 (fractions allowed), not '%s'", flag, s);
        return -1;
    }
    *ms = (uint64_t)(v * 1000 + 0.5);
    if (*ms == 0)
        *ms = 1;
    return 0;
}

#endif
