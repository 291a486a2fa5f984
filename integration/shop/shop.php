<?php
// A small merchant app in plain PHP, used by the end-to-end tests beside
// shop.py. Served by PHP's built-in server:
//
//   APP_DB=<dir>/shop.db SHOP_CADDY_INTERNAL=http://127.0.0.1:<port> SHOP_VERIFY_SECRET=<secret> \
//     PHP_CLI_SERVER_WORKERS=4 php -S 127.0.0.1:<port> shop.php
//
// It holds no signing secret: Payment Page URLs come from Caddy's internal
// listener, and Gate requests go out unsigned through Caddy, which signs
// them. Callbacks are taken by examples/app/receiver.php, the receiver the
// app guide prints, which stores each event once in APP_DB; this file only
// counts what reached it, and checks each stored body with
// examples/app/verify.php and SHOP_VERIFY_SECRET.
//
// HTTP API (as shop.py's, for the scenarios the PHP shop runs):
//   POST /callback   a callback forwarded by Caddy (receiver.php)
//   POST /buy        {"method","payment_id","amount","currency"} -> Gate sale via Caddy
//   POST /checkout   {"payment_id","amount","currency","method","extra":{...}} -> Payment Page URL via Caddy
//   GET  /state      what the shop stored, as JSON
declare(strict_types=1);

const APP_DIR = __DIR__ . '/../../examples/app';

function shop_db(): PDO
{
    $db = new PDO('sqlite:' . getenv('APP_DB'), null, null, [
        PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION,
        PDO::ATTR_TIMEOUT => 10,
    ]);
    $db->exec('CREATE TABLE IF NOT EXISTS shop_arrivals (
        event_key TEXT, status INTEGER, replay INTEGER, project_header TEXT, path TEXT)');
    $db->exec('CREATE TABLE IF NOT EXISTS shop_outgoing (record TEXT)');
    return $db;
}

// caddy sends one request to Caddy's internal listener and records it.
function caddy(string $method, string $path, ?array $body = null): array
{
    $base = getenv('SHOP_CADDY_INTERNAL');
    $host = parse_url($base, PHP_URL_HOST);
    if (!in_array($host, ['127.0.0.1', '::1', 'localhost'], true)) {
        throw new RuntimeException("refusing a non-loopback Caddy: $base");
    }
    $http = ['method' => $method, 'ignore_errors' => true, 'timeout' => 15];
    if ($body !== null) {
        $http['header'] = "Content-Type: application/json\r\n";
        $http['content'] = json_encode($body);
    }
    $answer = file_get_contents($base . $path, false, stream_context_create(['http' => $http]));
    $headers = [];
    foreach ($http_response_header as $line) {
        if (str_contains($line, ':')) {
            [$name, $value] = explode(':', $line, 2);
            $headers[$name] = trim($value);
        }
    }
    preg_match('{^HTTP/\S+ (\d{3})}', $http_response_header[0], $m);
    $parsed = json_decode((string)$answer);
    $record = [
        'method' => $method,
        'path' => $path,
        'body' => $body,
        'status' => (int)$m[1],
        'headers' => $headers,
        'answer' => json_last_error() === JSON_ERROR_NONE ? $parsed : $answer,
    ];
    shop_db()->prepare('INSERT INTO shop_outgoing VALUES (?)')->execute([json_encode($record)]);
    return $record;
}

function reply(int $status, $value): void
{
    http_response_code($status);
    header('Content-Type: application/json');
    echo json_encode($value, JSON_UNESCAPED_SLASHES);
}

$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
$method = $_SERVER['REQUEST_METHOD'];

if ($path === '/callback') {
    register_shutdown_function(function (): void {
        shop_db()->prepare('INSERT INTO shop_arrivals VALUES (?, ?, ?, ?, ?)')->execute([
            $_SERVER['HTTP_X_ECOMMPAY_EVENT_KEY'] ?? '',
            http_response_code(),
            ($_SERVER['HTTP_X_ECOMMPAY_REPLAY'] ?? '') === '1' ? 1 : 0,
            $_SERVER['HTTP_X_ECOMMPAY_PROJECT_ID'] ?? '',
            parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH),
        ]);
    });
    require APP_DIR . '/receiver.php';
    return;
}

$request = json_decode(file_get_contents('php://input') ?: '{}', true) ?? [];

if ("$method $path" === 'POST /buy') {
    $id = $request['payment_id'];
    reply(200, caddy('POST', "/v2/payment/wallet/{$request['method']}/sale", [
        'general' => ['payment_id' => $id],
        'customer' => ['id' => 'customer123', 'ip_address' => '192.0.2.10', 'email' => 'customer@example.com', 'phone' => '351912345678'],
        'payment' => ['amount' => $request['amount'], 'currency' => $request['currency'], 'description' => "order $id"],
        'return_url' => ['default' => 'http://127.0.0.1/return'],
    ]));
    return;
}

if ("$method $path" === 'POST /checkout') {
    $params = [
        'payment_id' => $request['payment_id'],
        'payment_amount' => (string)$request['amount'],
        'payment_currency' => $request['currency'],
        'customer_id' => 'customer123',
    ];
    if (!empty($request['method'])) {
        $params['force_payment_method'] = $request['method'];
    }
    $params += $request['extra'] ?? [];
    reply(200, caddy('GET', '/payment-page?' . http_build_query($params, '', '&', PHP_QUERY_RFC3986)));
    return;
}

if ("$method $path" === 'GET /state') {
    require_once APP_DIR . '/verify.php';
    $db = shop_db();
    $db->exec('CREATE TABLE IF NOT EXISTS ecommpay_events (event_key TEXT PRIMARY KEY, payment_id TEXT,
        payment_status TEXT, operation_type TEXT, operation_status TEXT, source TEXT, body TEXT, received_at TEXT)');
    $state = ['events' => new stdClass(), 'event_order' => [], 'payments' => new stdClass(),
        'rejected' => [], 'callback_posts' => 0, 'outgoing' => []];
    $arrivals = [];
    foreach ($db->query('SELECT * FROM shop_arrivals', PDO::FETCH_ASSOC) as $a) {
        $state['callback_posts']++;
        if ($a['status'] < 200 || $a['status'] > 299) {
            $state['rejected'][] = $a;
            continue;
        }
        $arrivals[$a['event_key']][] = $a;
    }
    foreach ($db->query('SELECT * FROM ecommpay_events ORDER BY rowid', PDO::FETCH_ASSOC) as $row) {
        $key = $row['event_key'];
        $got = $arrivals[$key] ?? [];
        $fresh = array_values(array_filter($got, fn ($a) => !$a['replay']));
        $body = json_decode($row['body']);
        $state['events']->$key = [
            'key' => $key,
            'count' => count($fresh),
            'replays' => count($got) - count($fresh),
            'project_header' => $fresh[0]['project_header'] ?? '',
            'path' => $fresh[0]['path'] ?? '',
            'raw_sha256' => hash('sha256', $row['body']),
            'verified' => ecommpay_signature_valid($row['body'], (string)getenv('SHOP_VERIFY_SECRET')),
            'source' => $row['source'],
            'payment_id' => $row['payment_id'],
            'payment_status' => $row['payment_status'],
            'operation_id' => $body->operation->id ?? null,
            'operation_type' => $row['operation_type'],
            'operation_status' => $row['operation_status'],
            'body' => $body,
        ];
        $state['event_order'][] = $key;
        $pid = $row['payment_id'];
        $payment = $state['payments']->$pid ?? ['statuses' => [], 'events' => []];
        $payment['statuses'][] = $row['payment_status'];
        $payment['events'][] = $key;
        $payment['last_status'] = $row['payment_status'];
        $state['payments']->$pid = $payment;
    }
    foreach ($db->query('SELECT record FROM shop_outgoing ORDER BY rowid') as [$record]) {
        $state['outgoing'][] = json_decode($record);
    }
    reply(200, $state);
    return;
}

reply(404, ['error' => 'not found']);
