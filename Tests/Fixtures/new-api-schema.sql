-- A new-api database as new-api's GORM AutoMigrate creates it on PostgreSQL, with sample rows.
--
-- The tables and columns are those of new-api's model/*.go structs (User, Token, Channel, Log,
-- Redemption, Option) at upstream main of 2026 (QuantumNous/new-api), written out as the DDL
-- GORM's postgres dialect emits for them: Go `int` → bigint, `int` primary keys → bigserial,
-- `type:int` → integer, strings without a size → text, `gorm.DeletedAt` → timestamptz, one index
-- per `index` tag named idx_<table>_<column>. Only the schema is reproduced here, no code.
--
-- new-api stores API keys in clear, 48 characters without the "sk-" prefix; quota is in units of
-- 500,000 per USD; log type 2 is a consumption, 5 an error, 1 a top-up, 3 management, 4 system.
-- Used by Tests/TallyServerTests/NewAPIImportTests.swift (tally import new-api).

CREATE TABLE "users" (
    "id"                     bigserial,
    "username"               text,
    "password"               text NOT NULL,
    "display_name"           text,
    "role"                   integer DEFAULT 1,
    "status"                 integer DEFAULT 1,
    "email"                  text,
    "github_id"              text,
    "discord_id"             text,
    "oidc_id"                text,
    "wechat_id"              text,
    "telegram_id"            text,
    "access_token"           char(32),
    "quota"                  integer DEFAULT 0,
    "used_quota"             integer DEFAULT 0,
    "request_count"          integer DEFAULT 0,
    "group"                  varchar(64) DEFAULT 'default',
    "aff_code"               varchar(32),
    "aff_count"              integer DEFAULT 0,
    "aff_quota"              integer DEFAULT 0,
    "aff_history"            integer DEFAULT 0,
    "inviter_id"             integer,
    "invite_rebate_eligible" boolean DEFAULT false,
    "deleted_at"             timestamptz,
    "linux_do_id"            text,
    "setting"                text,
    "remark"                 varchar(255),
    "stripe_customer"        varchar(64),
    "created_at"             bigint,
    "last_login_at"          bigint DEFAULT 0,
    "auth_version"           bigint NOT NULL DEFAULT 1,
    PRIMARY KEY ("id"),
    CONSTRAINT "uni_users_username" UNIQUE ("username")
);
CREATE INDEX "idx_users_username" ON "users" ("username");
CREATE INDEX "idx_users_display_name" ON "users" ("display_name");
CREATE INDEX "idx_users_email" ON "users" ("email");
CREATE UNIQUE INDEX "idx_users_access_token" ON "users" ("access_token");
CREATE UNIQUE INDEX "idx_users_aff_code" ON "users" ("aff_code");
CREATE INDEX "idx_users_inviter_id" ON "users" ("inviter_id");
CREATE INDEX "idx_users_deleted_at" ON "users" ("deleted_at");

CREATE TABLE "tokens" (
    "id"                   bigserial,
    "user_id"              bigint,
    "key"                  varchar(128),
    "status"               bigint DEFAULT 1,
    "name"                 text,
    "created_time"         bigint,
    "accessed_time"        bigint,
    "expired_time"         bigint DEFAULT -1,
    "remain_quota"         bigint DEFAULT 0,
    "unlimited_quota"      boolean,
    "model_limits_enabled" boolean,
    "model_limits"         text,
    "allow_ips"            text DEFAULT '',
    "used_quota"           bigint DEFAULT 0,
    "group"                text DEFAULT '',
    "cross_group_retry"    boolean,
    "billing_type"         bigint DEFAULT 0,
    "deleted_at"           timestamptz,
    PRIMARY KEY ("id")
);
CREATE INDEX "idx_tokens_user_id" ON "tokens" ("user_id");
CREATE UNIQUE INDEX "idx_tokens_key" ON "tokens" ("key");
CREATE INDEX "idx_tokens_name" ON "tokens" ("name");
CREATE INDEX "idx_tokens_deleted_at" ON "tokens" ("deleted_at");

CREATE TABLE "channels" (
    "id"                   bigserial,
    "type"                 bigint DEFAULT 0,
    "key"                  text NOT NULL,
    "open_ai_organization" text,
    "test_model"           text,
    "status"               bigint DEFAULT 1,
    "name"                 text,
    "weight"               bigint DEFAULT 0,
    "created_time"         bigint,
    "test_time"            bigint,
    "response_time"        bigint,
    "base_url"             text DEFAULT '',
    "other"                text,
    "balance"              decimal,
    "balance_updated_time" bigint,
    "models"               text,
    "group"                varchar(64) DEFAULT 'default',
    "used_quota"           bigint DEFAULT 0,
    "model_mapping"        text,
    "status_code_mapping"  varchar(1024) DEFAULT '',
    "priority"             bigint DEFAULT 0,
    "auto_ban"             bigint DEFAULT 1,
    "other_info"           text,
    "tag"                  text,
    "setting"              text,
    "param_override"       text,
    "header_override"      text,
    "remark"               varchar(255),
    "channel_info"         json,
    "settings"             text,
    PRIMARY KEY ("id")
);
CREATE INDEX "idx_channels_name" ON "channels" ("name");
CREATE INDEX "idx_channels_tag" ON "channels" ("tag");

CREATE TABLE "logs" (
    "id"                  bigserial,
    "user_id"             bigint,
    "created_at"          bigint,
    "type"                bigint,
    "content"             text,
    "username"            text DEFAULT '',
    "token_name"          text DEFAULT '',
    "model_name"          text DEFAULT '',
    "quota"               bigint DEFAULT 0,
    "prompt_tokens"       bigint DEFAULT 0,
    "completion_tokens"   bigint DEFAULT 0,
    "use_time"            bigint DEFAULT 0,
    "is_stream"           boolean,
    "channel_id"          bigint,
    "token_id"            bigint DEFAULT 0,
    "group"               text,
    "ip"                  text DEFAULT '',
    "request_id"          varchar(64) DEFAULT '',
    "upstream_request_id" varchar(128) DEFAULT '',
    "other"               text,
    PRIMARY KEY ("id")
);
CREATE INDEX "idx_created_at_id" ON "logs" ("id", "created_at");
CREATE INDEX "idx_logs_user_id" ON "logs" ("user_id");
CREATE INDEX "idx_created_at_type" ON "logs" ("created_at", "type");
CREATE INDEX "idx_logs_username" ON "logs" ("username");
CREATE INDEX "index_username_model_name" ON "logs" ("model_name", "username");
CREATE INDEX "idx_logs_token_name" ON "logs" ("token_name");
CREATE INDEX "idx_logs_model_name" ON "logs" ("model_name");
CREATE INDEX "idx_logs_channel_id" ON "logs" ("channel_id");
CREATE INDEX "idx_logs_token_id" ON "logs" ("token_id");
CREATE INDEX "idx_logs_group" ON "logs" ("group");
CREATE INDEX "idx_logs_ip" ON "logs" ("ip");
CREATE INDEX "idx_logs_request_id" ON "logs" ("request_id");
CREATE INDEX "idx_logs_upstream_request_id" ON "logs" ("upstream_request_id");

CREATE TABLE "redemptions" (
    "id"            bigserial,
    "user_id"       bigint,
    "key"           char(32),
    "status"        bigint DEFAULT 1,
    "name"          text,
    "quota"         bigint DEFAULT 100,
    "created_time"  bigint,
    "redeemed_time" bigint,
    "used_user_id"  bigint,
    "deleted_at"    timestamptz,
    "expired_time"  bigint,
    PRIMARY KEY ("id")
);
CREATE UNIQUE INDEX "idx_redemptions_key" ON "redemptions" ("key");
CREATE INDEX "idx_redemptions_name" ON "redemptions" ("name");
CREATE INDEX "idx_redemptions_used_user_id" ON "redemptions" ("used_user_id");
CREATE INDEX "idx_redemptions_deleted_at" ON "redemptions" ("deleted_at");

CREATE TABLE "options" (
    "key"   text,
    "value" text,
    PRIMARY KEY ("key")
);

-- Sample data ------------------------------------------------------------------------------

INSERT INTO "options" ("key", "value") VALUES
    ('GroupRatio', '{"default":1,"vip":1.5,"svip":0.8}'),
    ('UserUsableGroups', '{"default":"默认分组","vip":"vip分组"}'),
    ('QuotaPerUnit', '500000');

-- root (id 1), alice (2, vip), bob (3, disabled), carol (4, soft-deleted), dave (5, admin in a
-- group whose name Tally cannot hold, overdrawn), erin (7, svip). used_quota and request_count are
-- new-api's running counters: root's and alice's include usage whose logs were trimmed.
INSERT INTO "users" ("id", "username", "password", "display_name", "role", "status", "email", "access_token",
                     "quota", "used_quota", "request_count", "group", "aff_code", "deleted_at", "created_at") VALUES
    (1, 'root',  'x', 'Root User', 100, 1, 'root@example.com',  'rootAccessToken63a9f0ea7bb980507', 100000000, 1500000, 620, 'default', 'aaaa', NULL, 1780000000),
    (2, 'alice', 'x', 'Alice',       1, 1, 'alice@example.com', 'aliceAccessToken+/=84e2b2184bcbf',   2500000, 4000000, 1700, 'vip',     'bbbb', NULL, 1780000100),
    (3, 'bob',   'x', 'Bob',         1, 2, '',                  NULL,                                       0, 1185480, 500, 'default', 'cccc', NULL, 1780000200),
    (4, 'carol', 'x', 'Carol',       1, 1, '',                  NULL,                                  750000,  777,  1, 'default', 'dddd', '2026-08-01 00:00:00+00', 1780000300),
    (5, 'dave',  'x', 'Dave',       10, 1, 'dave@example.com',  NULL,                                   -5000,    0,  0, '企业',     'eeee', NULL, 1780000400),
    (7, 'erin',  'x', 'Erin',        1, 1, '',                  NULL,                                 1000000, 1242500, 500, 'svip',    'ffff', NULL, 1780000500);
SELECT setval('users_id_seq', 7);

INSERT INTO "tokens" ("id", "user_id", "key", "status", "name", "created_time", "accessed_time", "expired_time",
                      "remain_quota", "unlimited_quota", "model_limits_enabled", "model_limits", "allow_ips", "group", "deleted_at") VALUES
    (1, 1,  'RootKey4813494d137e1631bba301d5acab6e7bb7aa74ce1', 1, 'root-default', 1780000000, 1788000000, -1, 0, true, false, '', '', '', NULL),
    (2, 2,  'AlicemainKeyffb26708407a53d05884215f7052a00b3ce9', 1, 'alice-main', 1780000100, 1788000000, -1, 1000000, false, false, '', NULL, '', NULL),
    (3, 2,  'AlicevipKey020ab0179bc2b00c038a792b9170ec2b0caf0', 1, 'alice-vip', 1780000100, 0, 4102444800, 300000, false, true,
            'gpt-4o,claude-sonnet-4', E'10.0.0.0/8\n192.168.1.1', 'vip', NULL),
    (4, 3,  'BobKey81b637d8fcd2c6da6359e6963113a1170de795e4b7', 2, 'bob', 1780000200, 0, -1, 500000, false, false, '', '', '', NULL),
    (5, 4,  'CarolKey4c26d9074c27d89ede59270c0ac14b71e071b152', 1, 'carol', 1780000300, 0, -1, 0, true, false, '', '', '', NULL),
    (6, 2,  'AliceoldKey29fa3b51d5defc882e409fa33b9feca5dd13f', 1, 'alice-old', 1770000000, 0, -1, 0, true, false, '', '', '', '2026-08-15 00:00:00+00'),
    (7, 7,  'ErinKey7cbccb0c4caadf9fcdb51ee457a828cc72a458798', 1, '这是一个非常非常长的令牌名字用于测试截断功能是否正确', 1780000500, 0, -1, 0, true, false, '', '', 'auto', NULL),
    (8, 99, 'OrphanKey88f6811ab5d8fc6d3177f9b7609ae0fcebfda18', 1, 'orphan', 1780000600, 0, -1, 0, true, false, '', '', '', NULL),
    (9, 5,  'DaveKey61ea0803f8853523b777d414ace3130cd4d3f92de', 3, 'dave', 1780000400, 0, 1700000000, 0, true, false, '', '', '', NULL);
SELECT setval('tokens_id_seq', 9);

INSERT INTO "channels" ("id", "type", "key", "status", "name", "created_time", "models", "group", "used_quota") VALUES
    (1, 1,  'sk-upstream-secret-1', 1, 'openai-main', 1780000000, 'gpt-4o,gpt-4o-mini', 'default,vip', 123456),
    (2, 14, 'sk-upstream-secret-2', 3, 'claude',      1780000000, 'claude-sonnet-4',    'vip',         7890),
    (5, 1,  'sk-upstream-secret-5', 2, '',            1780000000, '',                   'default',     0);
SELECT setval('channels_id_seq', 5);

INSERT INTO "redemptions" ("id", "user_id", "key", "status", "name", "quota", "created_time", "redeemed_time", "used_user_id", "expired_time") VALUES
    (1, 1, '40be4e59b9a2a2b5dffb918c0e86b3d7', 1, 'welcome', 500000, 1780000000, 0, 0, 0),
    (2, 1, '1aec9c5d0644e11fd9dd0f9fb36009fb', 3, 'used',    250000, 1780000000, 1785000000, 2, 0),
    (3, 1, 'd02c4c4cde7ae76252540d116a40f23a', 1, 'zero',    0,      1780000000, 0, 0, 0);
SELECT setval('redemptions_id_seq', 3);

-- 3,000 generated requests over September and October 2026: users 1, 2 (two keys), 3 and 7;
-- every 50th is an error (type 5, quota 0, status code in `other`).
INSERT INTO "logs" ("id", "user_id", "created_at", "type", "content", "username", "token_name", "model_name", "quota",
                    "prompt_tokens", "completion_tokens", "use_time", "is_stream", "channel_id", "token_id", "group",
                    "ip", "request_id", "other")
SELECT g,
       u.user_id,
       1788220800 + g * 1700,
       CASE WHEN g % 50 = 0 THEN 5 ELSE 2 END,
       CASE WHEN g % 50 = 0 THEN 'upstream error: rate limited' ELSE '模型倍率 2.50，分组倍率 1.00' END,
       u.username, u.token_name,
       CASE WHEN g % 3 = 0 THEN 'claude-sonnet-4' ELSE 'gpt-4o' END,
       CASE WHEN g % 50 = 0 THEN 0 ELSE (g * 37) % 5000 + 1 END,
       100 + g % 900, 10 + g % 300, g % 30, g % 2 = 0,
       CASE WHEN g % 3 = 0 THEN 2 ELSE 1 END,
       u.token_id, u."group",
       CASE WHEN g % 4 = 0 THEN '203.0.113.' || (g % 250) ELSE '' END,
       '2026090100000000000' || g,
       CASE WHEN g % 50 = 0 THEN '{"error_type":"upstream_error","error_code":"rate_limit","status_code":429}'
            ELSE '{"model_ratio":1.25,"group_ratio":1,"completion_ratio":4,"cache_tokens":' || (g % 7) || ',"cache_ratio":0.5}' END
FROM generate_series(1, 3000) AS g
JOIN (VALUES (0, 1, 'root', 'root-default', 1, 'default'),
             (1, 2, 'alice', 'alice-main', 2, 'vip'),
             (2, 2, 'alice', 'alice-vip', 3, 'vip'),
             (3, 2, 'alice', 'alice-main', 2, 'vip'),
             (4, 3, 'bob', 'bob', 4, 'default'),
             (5, 7, 'erin', '这是一个非常非常长的令牌名字用于测试截断功能是否正确', 7, 'svip'))
     AS u(slot, user_id, username, token_name, token_id, "group") ON u.slot = g % 6;

-- Rows that are not requests, and the awkward ones: a top-up, a management and a system entry
-- (not imported); a task re-charge delta with no token and a negative quota; a request of a
-- deleted user and one on a deleted key (imported); a request of a user who no longer exists
-- (skipped).
INSERT INTO "logs" ("id", "user_id", "created_at", "type", "content", "username", "token_name", "model_name", "quota",
                    "prompt_tokens", "completion_tokens", "use_time", "is_stream", "channel_id", "token_id", "group", "other") VALUES
    (3001, 2, 1789000000, 1, '通过兑换码充值 ＄0.500000 额度，兑换码ID 2', 'alice', '', '', 0, 0, 0, 0, false, 0, 0, '', ''),
    (3002, 1, 1789000100, 3, '管理员将用户额度从 ＄0 修改为 ＄200', 'root', '', '', 0, 0, 0, 0, false, 0, 0, '', ''),
    (3003, 1, 1789000200, 4, 'system notice', 'root', '', '', 0, 0, 0, 0, false, 0, 0, '', ''),
    (3004, 2, 1789000300, 2, 'task settle', 'alice', '', 'suno-v4', 2000, 0, 0, 12, false, 1, 0, 'vip', '{"task_id":"t1"}'),
    (3005, 2, 1789000400, 2, 'task refund delta', 'alice', '', 'suno-v4', -500, 0, 0, 0, false, 1, 0, 'vip', '{"task_id":"t1","quota_delta":-500}'),
    (3006, 4, 1789000500, 2, '', 'carol', 'carol', 'gpt-4o', 777, 50, 60, 1, false, 1, 5, 'default', '{}'),
    (3007, 2, 1785000000, 2, '', 'alice', 'alice-old', 'gpt-4o', 4242, 500, 600, 2, true, 1, 6, 'vip', '{}'),
    (3008, 99, 1789000600, 2, '', 'ghost', 'orphan', 'gpt-4o', 999, 10, 10, 1, false, 1, 8, 'default', '{}');
SELECT setval('logs_id_seq', 3008);
