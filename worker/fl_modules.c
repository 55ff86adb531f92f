/*
 * fl_modules.c - the worker's subsystems, in init order (destroyed in
 * reverse). A new subsystem adds a line. commands comes after api (it
 * uses the API's pool) and is destroyed after mqtt (no publish outcome
 * can reach it then). rollup also uses the API's pool;
 * ws uses the API's Redis connection and token check.
 */
#include "fl_worker.h"

extern const fl_module_t fl_lag_module;
extern const fl_module_t fl_http_module;
extern const fl_module_t fl_health_module;
extern const fl_module_t fl_api_module;
extern const fl_module_t fl_commands_module;
extern const fl_module_t fl_rollup_module;
extern const fl_module_t fl_ws_module;
extern const fl_module_t fl_ingest_module;
extern const fl_module_t fl_mqtt_module;

const fl_module_t *const fl_modules[] = {
    &fl_lag_module,
    &fl_http_module,
    &fl_health_module,
    &fl_api_module,
    &fl_commands_module,
    &fl_rollup_module,
    &fl_ws_module,
    &fl_ingest_module,
    &fl_mqtt_module,
    NULL,
};
