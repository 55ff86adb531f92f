/*
 * fl_routes.h - the REST API's route tables (fl_routes.c) and what each
 * API file provides: its routes and an init that registers its
 * statements.
 */
#ifndef FL_ROUTES_H
#define FL_ROUTES_H

#include "fl_api.h"

/* NULL-terminated, in match order */
extern const fl_api_route_t *const fl_api_routes[];

/* every API file's init, once, before the pool connects */
void fl_api_routes_init(void);

void                        fl_devices_init(void);
extern const fl_api_route_t fl_devices_routes[];
void                        fl_state_init(void);
extern const fl_api_route_t fl_state_routes[];
void                        fl_keys_init(void);
extern const fl_api_route_t fl_keys_routes[];
void                        fl_commands_init(void);
extern const fl_api_route_t fl_commands_routes[];
void                        fl_history_init(void);
extern const fl_api_route_t fl_history_routes[];

#endif
