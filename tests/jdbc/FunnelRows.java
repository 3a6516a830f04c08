import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.Statement;
import java.util.Properties;

/** Runs one statement through the official ClickHouse JDBC driver and prints its rows, tab-separated:
 *  java FunnelRows JDBC_URL USER PASSWORD SQL. A refused statement prints "ERROR <SQLException message>"
 *  and exits with 2. */
public class FunnelRows {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        props.setProperty("password", args[2]);
        try (Connection conn = DriverManager.getConnection(args[0], props);
             Statement stmt = conn.createStatement()) {
            System.out.println("DRIVER\t" + conn.getMetaData().getDriverName() + "\t" + conn.getMetaData().getDriverVersion());
            try (ResultSet rs = stmt.executeQuery(args[3])) {
                ResultSetMetaData meta = rs.getMetaData();
                StringBuilder header = new StringBuilder("COLUMNS");
                for (int i = 1; i <= meta.getColumnCount(); i++) {
                    header.append('\t').append(meta.getColumnName(i)).append(':').append(meta.getColumnTypeName(i));
                }
                System.out.println(header);
                while (rs.next()) {
                    StringBuilder row = new StringBuilder("ROW");
                    for (int i = 1; i <= meta.getColumnCount(); i++) {
                        row.append('\t').append(rs.getString(i));
                    }
                    System.out.println(row);
                }
            }
        } catch (java.sql.SQLException e) {
            Throwable cause = e;
            StringBuilder message = new StringBuilder(String.valueOf(e.getMessage()));
            while ((cause = cause.getCause()) != null) message.append(" <- ").append(cause.getMessage());
            System.out.println("ERROR\t" + message.toString().replace('\n', ' '));
            System.exit(2);
        }
    }
}
