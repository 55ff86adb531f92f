/*
 * fl_routes.c - the REST API's route tables, one per API file, and their
 * init functions: a new API file adds a line to each list (the way
 * fl_modules.c lists the worker's modules). fl_api.c matches a request
 * against the tables in this order.
 */
#include "fl_routes.h"

const fl_api_route_t *const fl_api_routes[] = {
    fl_devices_routes,
    fl_state_routes,
    fl_keys_routes,
    fl_commands_routes,
    fl_history_routes,
    NULL,
};

void fl_api_routes_init(void)
{
    fl_devices_init();
    fl_state_init();
    fl_keys_init();
    fl_commands_init();
    fl_history_init();
}
