// Reads one query's rows from a ClickHouse HTTP endpoint with clickhouse-go, the client Grafana's
// ClickHouse data source is built on, and prints them as JSON for the tests to compare
// (tests/integration/test_grafana_panels.py): {"types": [...], "rows": [[...], ...]}.
//
//	go run . HOST:PORT USER PASSWORD SQL
//
// Values are printed as sendtrack's /query prints them: Date as 2006-01-02, DateTime and DateTime64
// in ISO form (fractions only when not zero), decimals as text, NULL as null.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
)

func main() {
	if len(os.Args) != 5 {
		fmt.Fprintln(os.Stderr, "usage: chgo HOST:PORT USER PASSWORD SQL")
		os.Exit(64)
	}
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:     []string{os.Args[1]},
		Protocol: clickhouse.HTTP,
		Auth:     clickhouse.Auth{Database: "sendtrack", Username: os.Args[2], Password: os.Args[3]},
		// Grafana's data source sends its query timeout; clickhouse-go its read timeout.
		ReadTimeout: 25 * time.Second,
	})
	if err != nil {
		fail("open", err)
	}
	rows, err := conn.Query(context.Background(), os.Args[4])
	if err != nil {
		fail("query", err)
	}
	defer rows.Close()
	columns := rows.ColumnTypes()
	types := make([]string, len(columns))
	for i, c := range columns {
		types[i] = c.DatabaseTypeName()
	}
	out := [][]any{}
	for rows.Next() {
		values := make([]any, len(columns))
		for i, c := range columns {
			values[i] = reflect.New(c.ScanType()).Interface()
		}
		if err := rows.Scan(values...); err != nil {
			fail("scan", err)
		}
		row := make([]any, len(values))
		for i, v := range values {
			row[i] = plain(reflect.ValueOf(v), types[i])
		}
		out = append(out, row)
	}
	if err := rows.Err(); err != nil {
		fail("rows", err)
	}
	doc, _ := json.Marshal(map[string]any{"types": types, "rows": out})
	fmt.Println(string(doc))
}

func fail(what string, err error) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", what, err)
	os.Exit(2)
}

// plain turns a scanned value into what JSON prints as /query does.
func plain(v reflect.Value, typ string) any {
	for v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface {
		if v.IsNil() {
			return nil
		}
		v = v.Elem()
	}
	inner := strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(typ, "LowCardinality("), "Nullable("), ")")
	switch x := v.Interface().(type) {
	case time.Time:
		x = x.UTC()
		if strings.HasPrefix(inner, "Date") && !strings.HasPrefix(inner, "DateTime") {
			return x.Format("2006-01-02")
		}
		if x.Nanosecond() != 0 {
			return x.Format("2006-01-02T15:04:05.000000")
		}
		return x.Format("2006-01-02T15:04:05")
	case fmt.Stringer:
		if strings.HasPrefix(inner, "Decimal") {
			return x.String()
		}
	}
	if v.Kind() == reflect.Slice {
		items := make([]any, v.Len())
		element := strings.TrimSuffix(strings.TrimPrefix(typ, "Array("), ")")
		for i := range items {
			items[i] = plain(v.Index(i), element)
		}
		return items
	}
	return v.Interface()
}
