package org.example.procfhir.hapi;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.hibernate.resource.jdbc.spi.StatementInspector;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Lets H2 use an index for HAPI's resource id lookups.
 *
 * <p>HAPI resolves the ids of a transaction's entries in one query per chunk of ids:
 * {@code where (r.RES_TYPE=? and r.FHIR_ID=?) or (r.RES_TYPE=? and r.FHIR_ID=?) or ...}.
 * PostgreSQL answers such an OR of ANDs from its indexes; H2's planner (2.3) cannot, and scans
 * the whole HFJ_RESOURCE table for every chunk, so every write slows down as the database grows.
 * This inspector adds the condition implied by that disjunction,
 * {@code r.FHIR_ID in (?, ?, ...) and (...)}, which H2 answers from the index on FHIR_ID. The
 * rows selected are the same: the added condition is implied by the original one.
 *
 * <p>Only statements of exactly that shape are touched (a parenthesised or whole WHERE
 * disjunction of two or more such terms, no literals, positional parameters only); the
 * parameters are renumbered ({@code ?1, ?2, ...}, H2's indexed parameters) so the id parameters
 * can appear twice while Hibernate still binds them by position.
 */
public class H2IdLookupStatementInspector implements StatementInspector {

	private static final Logger ourLog = LoggerFactory.getLogger(H2IdLookupStatementInspector.class);

	private static final String COLUMN_EQ = "(\\w+)\\.(RES_TYPE|FHIR_ID)\\s*=\\s*\\?(\\d+)";
	// A term: "a.RES_TYPE=?1 and a.FHIR_ID=?2", with or without parentheses around it (Hibernate
	// 6 writes none: AND binds tighter than OR).
	private static final Pattern TERM =
			Pattern.compile(COLUMN_EQ + "\\s+and\\s+" + COLUMN_EQ, Pattern.CASE_INSENSITIVE);
	private static final Pattern NUMBERED_PARAMETER = Pattern.compile("\\?\\d");

	private final AtomicBoolean myLogged = new AtomicBoolean();

	@Override
	public String inspect(String theSql) {
		if (!theSql.contains("FHIR_ID") || !theSql.contains(" or ") || theSql.indexOf('\'') >= 0) {
			return theSql;
		}
		if (NUMBERED_PARAMETER.matcher(theSql).find()) {
			return theSql; // already numbered parameters: leave alone
		}
		String result;
		try {
			result = rewriteAll(numberParameters(theSql));
		} catch (RuntimeException | StackOverflowError e) {
			ourLog.warn("SQL left as it is ({}): {}", e, abbreviate(theSql));
			return theSql;
		}
		if (result == null) {
			return theSql;
		}
		if (myLogged.compareAndSet(false, true)) {
			ourLog.info("H2 id lookups get an indexable FHIR_ID IN (...) condition, e.g.: {}", abbreviate(result));
		}
		return result;
	}

	/**
	 * The SQL with each run of two or more terms joined by OR rewritten, or null if none is. The
	 * terms are found one by one (a single regex over the whole run recurses once per term and
	 * overflows the stack on long lists).
	 */
	private static String rewriteAll(String theSql) {
		Matcher term = TERM.matcher(theSql);
		StringBuilder out = new StringBuilder(theSql.length() + 256);
		int copied = 0;
		int runStart = -1;
		int runEnd = -1;
		int runTerms = 0;
		boolean changed = false;
		while (true) {
			boolean found = term.find();
			if (found && runTerms > 0) {
				String gap = theSql.substring(runEnd, term.start()).replaceAll("\\s+", "").toLowerCase();
				if (gap.equals("or") || gap.equals(")or(")) {
					runEnd = term.end();
					runTerms++;
					continue;
				}
			}
			if (runTerms >= 2) {
				int start = runStart;
				int end = runEnd;
				String head = theSql.substring(0, start).stripTrailing();
				String tail = theSql.substring(end).stripLeading();
				if (head.endsWith("(") && tail.startsWith(")") && theSql.substring(runStart, runEnd).contains(")")) {
					// parenthesised terms: "(t1) or (t2)"; take in their outer parentheses
					start = head.length() - 1;
					end = theSql.length() - tail.length() + 1;
				}
				String rewritten = rewrite(theSql, start, end, theSql.substring(start, end));
				if (rewritten != null) {
					out.append(theSql, copied, start).append(rewritten);
					copied = end;
					changed = true;
				}
			}
			if (!found) {
				break;
			}
			runStart = term.start();
			runEnd = term.end();
			runTerms = 1;
		}
		if (!changed) {
			return null;
		}
		out.append(theSql, copied, theSql.length());
		return out.toString();
	}

	/** The disjunction with an implied {@code FHIR_ID in (...)}, or null to keep it as it is. */
	private static String rewrite(String theSql, int theStart, int theEnd, String theDisjunction) {
		String before = theSql.substring(0, theStart).stripTrailing().toLowerCase();
		String after = theSql.substring(theEnd).stripLeading().toLowerCase();
		boolean parenthesised = before.endsWith("(") && after.startsWith(")");
		boolean wholeWhere = before.endsWith(" where") && (after.isEmpty() || after.startsWith("order by"));
		if (!(parenthesised || wholeWhere)) {
			return null;
		}
		if (parenthesised && before.substring(0, before.length() - 1).stripTrailing().endsWith("not")) {
			return null;
		}
		String alias = null;
		List<String> idParams = new ArrayList<>();
		Matcher term = TERM.matcher(theDisjunction);
		List<String> gaps = new ArrayList<>();
		int terms = 0;
		int end = 0;
		while (term.find()) {
			gaps.add(theDisjunction.substring(end, term.start()).replaceAll("\\s+", ""));
			end = term.end();
			terms++;
			String a1 = term.group(1);
			String a2 = term.group(4);
			String c1 = term.group(2).toUpperCase();
			String c2 = term.group(5).toUpperCase();
			if (!a1.equals(a2) || c1.equals(c2) || (alias != null && !alias.equals(a1))) {
				return null;
			}
			alias = a1;
			idParams.add("?" + (c1.equals("FHIR_ID") ? term.group(3) : term.group(6)));
		}
		gaps.add(theDisjunction.substring(end).replaceAll("\\s+", ""));
		// Separators: all bare ("", "or", ..., "") or all parenthesised ("(", ")or(", ..., ")").
		boolean bare = gaps.get(0).isEmpty();
		for (int i = 0; i < gaps.size(); i++) {
			String expected = i == 0 ? (bare ? "" : "(") : i == gaps.size() - 1 ? (bare ? "" : ")") : (bare ? "or" : ")or(");
			if (!gaps.get(i).equalsIgnoreCase(expected)) {
				return null;
			}
		}
		if (terms < 2) {
			return null;
		}
		return alias + ".FHIR_ID in (" + String.join(",", idParams) + ") and (" + theDisjunction + ")";
	}

	/** Every positional {@code ?} becomes {@code ?1, ?2, ...} in order (the SQL has no literals). */
	private static String numberParameters(String theSql) {
		StringBuilder out = new StringBuilder(theSql.length() + 64);
		int n = 0;
		for (int i = 0; i < theSql.length(); i++) {
			char c = theSql.charAt(i);
			out.append(c);
			if (c == '?') {
				out.append(++n);
			}
		}
		return out.toString();
	}

	private static String abbreviate(String theSql) {
		return theSql.length() <= 400 ? theSql : theSql.substring(0, 400) + "...";
	}
}
