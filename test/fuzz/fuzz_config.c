/*
 * fuzz_config.c - libFuzzer harness for the configuration loader.
 *
 * Feeds the input to fl_config_load_string() as a whole YAML file and frees
 * whatever comes back. ASan/UBSan catch memory and arithmetic errors; on
 * top of that a rejected input must carry a "fuzz.yaml:LINE: " message and
 * an accepted one must hold values inside the documented ranges.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fl_config.h"

/* Inputs above this are rejected by fl_config_load() anyway (16 MiB); keep
 * the fuzzer on small documents where it finds things quickly. */
#define FUZZ_MAX_INPUT 65536

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char name[] = "fuzz.yaml";
    char              err[FL_CONF_ERRLEN];
    fl_config_t      *cf;

    if (size > FUZZ_MAX_INPUT)
        return 0;

    err[0] = '\0';
    /* libyaml asserts on a NULL input, even an empty one */
    cf = fl_config_load_string(name, data ? (const char *)data : "", size, err,
                               sizeof(err));
    if (cf == NULL) {
        /* every failure is explained, with the file name first */
        if (strncmp(err, name, sizeof(name) - 1) != 0 ||
            err[sizeof(name) - 1] != ':')
            abort();
        return 0;
    }

    if (cf->workers < 1 || cf->workers > FL_MAX_WORKERS ||
        cf->listen_port < 1 || cf->listen_port > 65535 ||
        cf->listen_host == NULL || cf->node_id == NULL || cf->mqtt.qos < 0 ||
        cf->mqtt.qos > 1 || cf->mqtt.topics.n < 1 ||
        cf->mqtt.topics.n > FL_CONF_MAX_LIST || cf->auth.admin_tokens.n < 1 ||
        cf->auth.admin_tokens.n > FL_CONF_MAX_LIST)
        abort();

    fl_config_free(cf);
    return 0;
}
