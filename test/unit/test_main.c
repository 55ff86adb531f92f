/*
 * test_main.c - the table of unit tests and the runner.
 *
 *   build/unit              run every test
 *   build/unit NAME...      run the named tests
 *   build/unit -l           list the names
 *
 * Prints one line per test, then "N passed, N failed"; exits 1 when a test
 * failed or a name is unknown.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl_core.h"
#include "unit.h"

void test_hist_empty(void);
void test_hist_single(void);
void test_hist_small_exact(void);
void test_hist_bucket_bounds(void);
void test_hist_uniform(void);
void test_hist_outliers(void);
void test_hist_min_max(void);
void test_hist_merge(void);
void test_hist_huge_clamp(void);
void test_window_rotate(void);

void test_config_defaults(void);
void test_config_empty_forms(void);
void test_config_scalars(void);
void test_config_durations(void);
void test_config_sizes(void);
void test_config_flow_mappings(void);
void test_config_lists(void);
void test_config_workers(void);
void test_config_listen(void);
void test_config_err_unknown_key(void);
void test_config_err_unknown_nested(void);
void test_config_err_type(void);
void test_config_err_range(void);
void test_config_err_qos(void);
void test_config_err_duration(void);
void test_config_err_size(void);
void test_config_err_listen(void);
void test_config_err_syntax(void);
void test_config_err_duplicate(void);
void test_config_err_not_mapping(void);
void test_config_err_log_level(void);
void test_config_err_list(void);
void test_config_load_file(void);
void test_parse_duration(void);
void test_parse_size(void);
void test_parse_listen(void);
void test_payload_topic(void);
void test_payload_flat(void);
void test_payload_values_form(void);
void test_payload_ts_epoch_ms(void);
void test_payload_ts_rfc3339(void);
void test_payload_ts_rejects(void);
void test_payload_batch(void);
void test_payload_senml_basic(void);
void test_payload_senml_base_fields(void);
void test_payload_senml_time(void);
void test_fanout_message_args(void);
void test_fanout_message_many_names(void);
void test_payload_senml_rejects(void);
void test_payload_senml_or_batch(void);
void test_payload_rej_empty(void);
void test_payload_rej_too_large(void);
void test_payload_rej_invalid_json(void);
void test_payload_rej_binary(void);
void test_payload_rej_utf8(void);
void test_payload_rej_deep(void);
void test_payload_rej_numbers(void);
void test_payload_rej_names(void);
void test_payload_rej_metrics(void);
void test_payload_rej_values(void);
void test_payload_rej_duplicates(void);
void test_payload_reject_names(void);
void test_payload_arrival_us(void);
void test_payload_cut(void);
void test_ack_accepts(void);
void test_ack_rejects(void);

void test_scan_utf8_seq(void);
void test_scan_utf8_valid(void);
void test_scan_ws(void);
void test_scan_values(void);
void test_scan_trailing(void);
void test_scan_commas(void);
void test_scan_strings(void);
void test_scan_unicode_escapes(void);
void test_scan_numbers(void);
void test_scan_nonfinite(void);
void test_scan_number_length(void);
void test_scan_depth(void);
void test_scan_first_error(void);
void test_scan_message_buffer(void);

void test_copy_header(void);
void test_copy_text_raw(void);
void test_copy_text_roundtrip(void);
void test_copy_numbers(void);
void test_copy_numbers_roundtrip(void);
void test_copy_bool(void);
void test_copy_layout(void);
void test_copy_ts(void);
void test_copy_ts_range(void);
void test_copy_rows(void);
void test_copy_ts_us(void);
void test_idset_basic(void);
void test_time_rfc3339(void);
void test_idset_many(void);

void test_history_time_epoch_ms(void);
void test_history_time_rfc3339(void);
void test_history_bucket(void);
void test_history_nbuckets(void);
void test_history_pick_bucket(void);
void test_history_ms(void);

void test_enc_json_strings(void);
void test_enc_json_strings_long(void);
void test_enc_json_numbers(void);
void test_enc_i64(void);
void test_enc_resp(void);
void test_enc_resp_append(void);
void test_enc_resp_large(void);
void test_fnv1a_vectors(void);

void test_ws_accept(void);
void test_ws_accept_bad_keys(void);
void test_ws_header(void);
void test_ws_close_payload(void);
void test_wsrx_text_in_place(void);
void test_wsrx_split_anywhere(void);
void test_wsrx_fragments_with_ping(void);
void test_wsrx_lengths(void);
void test_wsrx_err_unmasked(void);
void test_wsrx_err_rsv(void);
void test_wsrx_err_opcode(void);
void test_wsrx_err_control(void);
void test_wsrx_err_continuation(void);
void test_wsrx_err_length_top_bit(void);
void test_wsrx_err_text_utf8(void);
void test_wsrx_too_big_on_header(void);
void test_wsrx_memory(void);
void test_wsrx_stop(void);
void test_wsrx_close_codes(void);
void test_wsrx_close_forms(void);
void test_wsrx_after_error(void);
void test_wsrx_empty(void);

void test_mqtt_vbi(void);
void test_mqtt_topic_filter(void);
void test_mqtt_put_connect(void);
void test_mqtt_put_connect_refused(void);
void test_mqtt_put_subscribe(void);
void test_mqtt_put_subscribe_refused(void);
void test_mqtt_put_unsubscribe(void);
void test_mqtt_put_publish(void);
void test_mqtt_put_publish_refused(void);
void test_mqtt_put_publish_expiry(void);
void test_mqttsh_dedup_ring(void);
void test_mqttsh_hash_record(void);
void test_mqttsh_xadd_argv(void);
void test_mqttsh_jitter(void);
void test_mqttsh_parse_uri(void);
void test_mqtt_put_puback(void);
void test_mqtt_put_pingreq_disconnect(void);
void test_mqtt_put_appends(void);
void test_mqtt_roundtrip(void);
void test_mqttrx_connack(void);
void test_mqttrx_connack_props(void);
void test_mqttrx_publish(void);
void test_mqttrx_publish_props(void);
void test_mqttrx_publish_topic_alias(void);
void test_mqttrx_publish_zero_copy(void);
void test_mqttrx_acks(void);
void test_mqttrx_suback_unsuback(void);
void test_mqttrx_pingresp_disconnect(void);
void test_mqttrx_several_in_one_feed(void);
void test_mqttrx_remaining_length_bounds(void);
void test_mqttrx_too_large_on_header(void);
void test_mqttrx_memory(void);
void test_mqttrx_err_property_length(void);
void test_mqttrx_err_duplicate_property(void);
void test_mqttrx_err_wildcard_topic(void);
void test_mqttrx_err_qos_dup(void);
void test_mqttrx_err_reserved_flags(void);
void test_mqttrx_err_packet_type(void);
void test_mqttrx_err_packet_id_zero(void);
void test_mqttrx_err_protocol(void);
void test_mqttrx_err_property_not_allowed(void);
void test_mqttrx_err_reason_codes(void);
void test_mqttrx_err_lengths(void);
void test_mqttrx_after_error(void);

static const fl_test_t tests[] = {
    {"hist_empty", test_hist_empty},
    {"hist_single", test_hist_single},
    {"hist_small_exact", test_hist_small_exact},
    {"hist_bucket_bounds", test_hist_bucket_bounds},
    {"hist_uniform", test_hist_uniform},
    {"hist_outliers", test_hist_outliers},
    {"hist_min_max", test_hist_min_max},
    {"hist_merge", test_hist_merge},
    {"hist_huge_clamp", test_hist_huge_clamp},
    {"window_rotate", test_window_rotate},

    {"config_defaults", test_config_defaults},
    {"config_empty_forms", test_config_empty_forms},
    {"config_scalars", test_config_scalars},
    {"config_durations", test_config_durations},
    {"config_sizes", test_config_sizes},
    {"config_flow_mappings", test_config_flow_mappings},
    {"config_lists", test_config_lists},
    {"config_workers", test_config_workers},
    {"config_listen", test_config_listen},
    {"config_err_unknown_key", test_config_err_unknown_key},
    {"config_err_unknown_nested", test_config_err_unknown_nested},
    {"config_err_type", test_config_err_type},
    {"config_err_range", test_config_err_range},
    {"config_err_qos", test_config_err_qos},
    {"config_err_duration", test_config_err_duration},
    {"config_err_size", test_config_err_size},
    {"config_err_listen", test_config_err_listen},
    {"config_err_syntax", test_config_err_syntax},
    {"config_err_duplicate", test_config_err_duplicate},
    {"config_err_not_mapping", test_config_err_not_mapping},
    {"config_err_log_level", test_config_err_log_level},
    {"config_err_list", test_config_err_list},
    {"config_load_file", test_config_load_file},
    {"parse_duration", test_parse_duration},
    {"parse_size", test_parse_size},
    {"parse_listen", test_parse_listen},
    {"payload_topic", test_payload_topic},
    {"payload_arrival_us", test_payload_arrival_us},
    {"payload_cut", test_payload_cut},
    {"payload_flat", test_payload_flat},
    {"payload_values_form", test_payload_values_form},
    {"payload_ts_epoch_ms", test_payload_ts_epoch_ms},
    {"payload_ts_rfc3339", test_payload_ts_rfc3339},
    {"payload_ts_rejects", test_payload_ts_rejects},
    {"payload_batch", test_payload_batch},
    {"payload_senml_basic", test_payload_senml_basic},
    {"payload_senml_base_fields", test_payload_senml_base_fields},
    {"payload_senml_time", test_payload_senml_time},
    {"fanout_message_args", test_fanout_message_args},
    {"fanout_message_many_names", test_fanout_message_many_names},
    {"payload_senml_rejects", test_payload_senml_rejects},
    {"payload_senml_or_batch", test_payload_senml_or_batch},
    {"payload_rej_empty", test_payload_rej_empty},
    {"payload_rej_too_large", test_payload_rej_too_large},
    {"payload_rej_invalid_json", test_payload_rej_invalid_json},
    {"payload_rej_binary", test_payload_rej_binary},
    {"payload_rej_utf8", test_payload_rej_utf8},
    {"payload_rej_deep", test_payload_rej_deep},
    {"payload_rej_numbers", test_payload_rej_numbers},
    {"payload_rej_names", test_payload_rej_names},
    {"payload_rej_metrics", test_payload_rej_metrics},
    {"payload_rej_values", test_payload_rej_values},
    {"payload_rej_duplicates", test_payload_rej_duplicates},
    {"payload_reject_names", test_payload_reject_names},
    {"ack_accepts", test_ack_accepts},
    {"ack_rejects", test_ack_rejects},

    {"scan_utf8_seq", test_scan_utf8_seq},
    {"scan_utf8_valid", test_scan_utf8_valid},
    {"scan_ws", test_scan_ws},
    {"scan_values", test_scan_values},
    {"scan_trailing", test_scan_trailing},
    {"scan_commas", test_scan_commas},
    {"scan_strings", test_scan_strings},
    {"scan_unicode_escapes", test_scan_unicode_escapes},
    {"scan_numbers", test_scan_numbers},
    {"scan_nonfinite", test_scan_nonfinite},
    {"scan_number_length", test_scan_number_length},
    {"scan_depth", test_scan_depth},
    {"scan_first_error", test_scan_first_error},
    {"scan_message_buffer", test_scan_message_buffer},

    {"copy_header", test_copy_header},
    {"copy_text_raw", test_copy_text_raw},
    {"copy_text_roundtrip", test_copy_text_roundtrip},
    {"copy_numbers", test_copy_numbers},
    {"copy_numbers_roundtrip", test_copy_numbers_roundtrip},
    {"copy_bool", test_copy_bool},
    {"copy_layout", test_copy_layout},
    {"copy_ts", test_copy_ts},
    {"copy_ts_range", test_copy_ts_range},
    {"copy_rows", test_copy_rows},
    {"copy_ts_us", test_copy_ts_us},
    {"idset_basic", test_idset_basic},
    {"time_rfc3339", test_time_rfc3339},
    {"idset_many", test_idset_many},
    {"history_time_epoch_ms", test_history_time_epoch_ms},
    {"history_time_rfc3339", test_history_time_rfc3339},
    {"history_bucket", test_history_bucket},
    {"history_nbuckets", test_history_nbuckets},
    {"history_pick_bucket", test_history_pick_bucket},
    {"history_ms", test_history_ms},

    {"enc_json_strings", test_enc_json_strings},
    {"enc_json_strings_long", test_enc_json_strings_long},
    {"enc_json_numbers", test_enc_json_numbers},
    {"enc_i64", test_enc_i64},
    {"enc_resp", test_enc_resp},
    {"enc_resp_append", test_enc_resp_append},
    {"enc_resp_large", test_enc_resp_large},
    {"fnv1a_vectors", test_fnv1a_vectors},

    {"ws_accept", test_ws_accept},
    {"ws_accept_bad_keys", test_ws_accept_bad_keys},
    {"ws_header", test_ws_header},
    {"ws_close_payload", test_ws_close_payload},
    {"wsrx_text_in_place", test_wsrx_text_in_place},
    {"wsrx_split_anywhere", test_wsrx_split_anywhere},
    {"wsrx_fragments_with_ping", test_wsrx_fragments_with_ping},
    {"wsrx_lengths", test_wsrx_lengths},
    {"wsrx_err_unmasked", test_wsrx_err_unmasked},
    {"wsrx_err_rsv", test_wsrx_err_rsv},
    {"wsrx_err_opcode", test_wsrx_err_opcode},
    {"wsrx_err_control", test_wsrx_err_control},
    {"wsrx_err_continuation", test_wsrx_err_continuation},
    {"wsrx_err_length_top_bit", test_wsrx_err_length_top_bit},
    {"wsrx_err_text_utf8", test_wsrx_err_text_utf8},
    {"wsrx_too_big_on_header", test_wsrx_too_big_on_header},
    {"wsrx_memory", test_wsrx_memory},
    {"wsrx_stop", test_wsrx_stop},
    {"wsrx_close_codes", test_wsrx_close_codes},
    {"wsrx_close_forms", test_wsrx_close_forms},
    {"wsrx_after_error", test_wsrx_after_error},
    {"wsrx_empty", test_wsrx_empty},

    {"mqtt_vbi", test_mqtt_vbi},
    {"mqtt_topic_filter", test_mqtt_topic_filter},
    {"mqtt_put_connect", test_mqtt_put_connect},
    {"mqtt_put_connect_refused", test_mqtt_put_connect_refused},
    {"mqtt_put_subscribe", test_mqtt_put_subscribe},
    {"mqtt_put_subscribe_refused", test_mqtt_put_subscribe_refused},
    {"mqtt_put_unsubscribe", test_mqtt_put_unsubscribe},
    {"mqtt_put_publish", test_mqtt_put_publish},
    {"mqtt_put_publish_refused", test_mqtt_put_publish_refused},
    {"mqtt_put_publish_expiry", test_mqtt_put_publish_expiry},
    {"mqttsh_dedup_ring", test_mqttsh_dedup_ring},
    {"mqttsh_hash_record", test_mqttsh_hash_record},
    {"mqttsh_xadd_argv", test_mqttsh_xadd_argv},
    {"mqttsh_jitter", test_mqttsh_jitter},
    {"mqttsh_parse_uri", test_mqttsh_parse_uri},
    {"mqtt_put_puback", test_mqtt_put_puback},
    {"mqtt_put_pingreq_disconnect", test_mqtt_put_pingreq_disconnect},
    {"mqtt_put_appends", test_mqtt_put_appends},
    {"mqtt_roundtrip", test_mqtt_roundtrip},
    {"mqttrx_connack", test_mqttrx_connack},
    {"mqttrx_connack_props", test_mqttrx_connack_props},
    {"mqttrx_publish", test_mqttrx_publish},
    {"mqttrx_publish_props", test_mqttrx_publish_props},
    {"mqttrx_publish_topic_alias", test_mqttrx_publish_topic_alias},
    {"mqttrx_publish_zero_copy", test_mqttrx_publish_zero_copy},
    {"mqttrx_acks", test_mqttrx_acks},
    {"mqttrx_suback_unsuback", test_mqttrx_suback_unsuback},
    {"mqttrx_pingresp_disconnect", test_mqttrx_pingresp_disconnect},
    {"mqttrx_several_in_one_feed", test_mqttrx_several_in_one_feed},
    {"mqttrx_remaining_length_bounds", test_mqttrx_remaining_length_bounds},
    {"mqttrx_too_large_on_header", test_mqttrx_too_large_on_header},
    {"mqttrx_memory", test_mqttrx_memory},
    {"mqttrx_err_property_length", test_mqttrx_err_property_length},
    {"mqttrx_err_duplicate_property", test_mqttrx_err_duplicate_property},
    {"mqttrx_err_wildcard_topic", test_mqttrx_err_wildcard_topic},
    {"mqttrx_err_qos_dup", test_mqttrx_err_qos_dup},
    {"mqttrx_err_reserved_flags", test_mqttrx_err_reserved_flags},
    {"mqttrx_err_packet_type", test_mqttrx_err_packet_type},
    {"mqttrx_err_packet_id_zero", test_mqttrx_err_packet_id_zero},
    {"mqttrx_err_protocol", test_mqttrx_err_protocol},
    {"mqttrx_err_property_not_allowed", test_mqttrx_err_property_not_allowed},
    {"mqttrx_err_reason_codes", test_mqttrx_err_reason_codes},
    {"mqttrx_err_lengths", test_mqttrx_err_lengths},
    {"mqttrx_after_error", test_mqttrx_after_error},
};

static int current_failures;

void fl_test_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;

    current_failures++;
    fprintf(stdout, "  %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
}

char *fl_test_repeat(const char *prefix, char c, size_t n, const char *suffix)
{
    size_t p = strlen(prefix), s = strlen(suffix);
    char  *buf = malloc(p + n + s + 1);

    if (buf == NULL)
        abort();
    memcpy(buf, prefix, p);
    memset(buf + p, c, n);
    memcpy(buf + p + n, suffix, s + 1);
    return buf;
}

int fl_test_failures(void)
{
    return current_failures;
}

/* Runs one test; returns 1 when it passed. */
static int run_test(const fl_test_t *t)
{
    current_failures = 0;
    t->fn();
    printf("%s %s\n", current_failures ? "FAIL" : "ok  ", t->name);
    fflush(stdout);
    return current_failures == 0;
}

int main(int argc, char **argv)
{
    size_t i;
    int    a, passed = 0, failed = 0;

    if (argc == 2 && strcmp(argv[1], "-l") == 0) {
        for (i = 0; i < fl_nelem(tests); i++)
            printf("%s\n", tests[i].name);
        return 0;
    }

    if (argc == 1) {
        for (i = 0; i < fl_nelem(tests); i++)
            run_test(&tests[i]) ? passed++ : failed++;
    }

    for (a = 1; a < argc; a++) {
        for (i = 0; i < fl_nelem(tests); i++) {
            if (strcmp(argv[a], tests[i].name) == 0)
                break;
        }
        if (i == fl_nelem(tests)) {
            printf("FAIL %s (no such test)\n", argv[a]);
            failed++;
            continue;
        }
        run_test(&tests[i]) ? passed++ : failed++;
    }

    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
